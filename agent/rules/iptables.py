"""Parse ``iptables-save`` (or ``ip6tables-save``) output, or ``iptables-restore`` input
as kube-proxy writes it, into the declared model.

It reads kube-proxy's iptables-mode chains, old and new layouts alike:
``KUBE-SERVICES``/``KUBE-NODEPORTS`` entries → (``KUBE-FW``/``KUBE-EXT``/``KUBE-XLB``) →
``KUBE-SVC``/``KUBE-SVL`` (the selection chain, with ``statistic`` and ``recent``
rules) → ``KUBE-SEP`` (the DNAT). Restore input's ``-N``, ``-I``, ``-D``, ``-F`` and
``-X`` lines are applied as the kernel would, in order. Every rule that is not part of
a service's path to an endpoint is counted in the model's ``ignored`` list, by chain
and reason: foreign NAT rules show up as *undeclared* traffic in the report.

A node has tens of thousands of such rules, so only the entry rules are tokenized; the
selection and endpoint chains are read with a few string searches each
(bench/rules_parse.py).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from natlens.agent.rules.model import (
    DeclaredEndpoint,
    DeclaredModel,
    Ignored,
    ServicePort,
    collection_paused,
)
from natlens.agent.rules.probability import effective_shares, kernel_probability
from natlens.errors import NatlensError
from natlens.proto.names import endpoint_key


class RulesParseError(NatlensError, ValueError):
    """A dump natlens cannot trust: the message names the line and what is wrong."""


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_ENTRY_SUFFIX = {" cluster IP": "clusterIP", " external IP": "externalIP",
                 " loadbalancer IP": "loadBalancer"}
_SELECT_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")
_FOLLOW_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")
_ENTRY_CHAINS = {("nat", "KUBE-SERVICES"), ("nat", "KUBE-NODEPORTS"),
                 ("filter", "KUBE-SERVICES"), ("filter", "KUBE-EXTERNAL-SERVICES")}
_PLUMBING = ("KUBE-MARK-MASQ", "KUBE-MARK-DROP", "KUBE-POSTROUTING", "KUBE-NODEPORTS",
             "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD",
             "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY", "MARK",
             "MASQUERADE", "RETURN", "ACCEPT", "DROP", "REJECT")
TABLES = ("nat", "filter")
BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


@dataclass(slots=True)
class Rule:
    line: int
    target: str = ""
    comment: str = ""
    dst: str = ""
    proto: str = ""
    dport: int | None = None
    probability: str | None = None  # as written, checked (kernel_probability)
    rcheck: bool = False
    to_destination: str = ""
    dst_local: bool = False


def tokenize(text: str) -> list[str]:
    """A rule's words, a quoted comment as one. The common case, one quoted comment
    standing as a word of its own, is split around it; anything else (escaped quotes,
    several quoted strings, quotes inside a word) goes through ``_TOKEN``, whose reading
    the fast one equals (tests/unit/test_iptables_parse.py)."""
    if '"' not in text:
        return text.split()
    head, _, rest = text.partition('"')
    comment, closed, tail = rest.partition('"')
    if (closed and '"' not in tail and (not head or head[-1].isspace())
            and (not tail or tail[0].isspace()) and not comment.endswith("\\")):
        return [*head.split(), comment, *tail.split()]
    return [b or q.replace('\\"', '"') for q, b in _TOKEN.findall(text)]


def _strip_prefix_len(addr: str) -> str:
    host, _, plen = addr.partition("/")
    if plen and plen not in ("32", "128"):
        return addr
    return host


def parse_rule(tokens: list[str], lineno: int) -> Rule:
    """Pick the options kube-proxy uses out of one rule (after ``-A CHAIN``), in any
    order."""
    r = Rule(lineno)
    i, n = 2, len(tokens)
    try:
        while i < n:
            t = tokens[i]
            if t == "-j" or t == "-g":
                r.target = tokens[i + 1]
                i += 2
            elif t == "--comment":
                r.comment = tokens[i + 1]
                i += 2
            elif t == "-d":
                r.dst = _strip_prefix_len(tokens[i + 1])
                i += 2
            elif t == "-p":
                r.proto = tokens[i + 1].lower()
                i += 2
            elif t == "--dport":
                r.dport = int(tokens[i + 1])
                i += 2
            elif t == "--probability":
                r.probability = _checked(tokens[i + 1])
                i += 2
            elif t == "--rcheck":
                r.rcheck = True
                i += 1
            elif t == "--to-destination":
                r.to_destination = tokens[i + 1]
                i += 2
            elif t == "--dst-type":
                r.dst_local = tokens[i + 1] == "LOCAL"
                i += 2
            elif t == "!":
                i += 2  # negated option: its value is not one kube-proxy keys on
            else:
                i += 1
    except IndexError:
        raise RulesParseError(f"line {lineno}: option {tokens[i]!r} has no value") from None
    except ValueError as e:
        raise RulesParseError(f"line {lineno}: {e}") from None
    return r


def _value(s: str, option: str, lineno: int) -> str | None:
    """The token after `` OPTION `` in a rule with its quoted strings blanked."""
    at = s.find(f" {option} ")
    if at < 0:
        if s.endswith(f" {option}"):
            raise RulesParseError(f"line {lineno}: option {option!r} has no value")
        return None
    rest = s[at + len(option) + 2:]
    end = rest.find(" ")
    return rest if end < 0 else rest[:end]


def _unquoted(line: str) -> str:
    """The rule with its quoted string (kube-proxy's comment) cut out, so that nothing
    in a comment is read as an option."""
    q1 = line.find('"')
    if q1 < 0:
        return line
    if line.count('"') - line.count('\\"') > 2:
        return _QUOTED.sub('""', line)
    return line[:q1] + line[line.rfind('"') + 1:]


def target_of(s: str, lineno: int) -> str:
    """The rule's target (``-j``/``-g``): the last one, after every match and comment."""
    at = max(s.rfind(" -j "), s.rfind(" -g "))
    if at < 0:
        if s.endswith((" -j", " -g")):
            raise RulesParseError(f"line {lineno}: option {s[-2:]!r} has no value")
        return ""
    end = s.find(" ", at + 4)
    return s[at + 4:] if end < 0 else s[at + 4:end]


@functools.lru_cache(maxsize=4096)
def float_shares(probabilities: tuple[str | None, ...]) -> tuple[float, ...]:
    """The effective shares of a selection chain's rules, given each ``--probability``
    as written (None: unconditional): every service with n endpoints has the same, so
    each sequence is computed once."""
    return tuple(float(x) for x in effective_shares(
        [None if p is None else kernel_probability(float(p)) for p in probabilities]))


@functools.lru_cache(maxsize=4096)
def _checked(text: str) -> str:
    """A ``--probability`` value the kernel would take (ValueError otherwise)."""
    kernel_probability(float(text))
    return text


def scan_rule(line: str, lineno: int) -> Rule:
    """The few options of a selection or endpoint chain's rule, by string search (a
    node has tens of thousands of these rules: tokenizing them all cost most of the
    parse)."""
    s = _unquoted(line)
    r = Rule(lineno, target=target_of(s, lineno))
    if "--probability" in s:
        try:
            r.probability = _checked(_value(s, "--probability", lineno) or "")
        except ValueError as e:
            raise RulesParseError(f"line {lineno}: {e}") from None
    r.rcheck = " --rcheck" in s
    if "--to-destination" in s:
        r.to_destination = _value(s, "--to-destination", lineno) or ""
    return r


class Hop(NamedTuple):
    """What a selection chain's rule says: where it goes, with what chance, whether it
    is an affinity check."""

    line: int
    target: str
    probability: str | None
    rcheck: bool


def scan_chain(lines: list[str], rules: list[int]) -> list[Hop]:
    """``scan_rule`` of each rule (``lines[i]``), written out for the common case (one
    quoted comment at most, a ``-j`` target): tens of thousands of these per node, and
    the function calls of the general path cost more than the searches. A hop's
    ``line`` is the rule's index in ``lines`` (its line number less one)."""
    out = []
    for n in rules:
        line = lines[n]
        q = line.find('"')
        if q >= 0:
            if line.count('"') != 2:
                r = scan_rule(line, n + 1)
                out.append(Hop(n, r.target, r.probability, r.rcheck))
                continue
            line = line[:q] + line[line.rfind('"') + 1:]
        at = line.rfind(" -j ")
        if at < 0 or " -g " in line or line.endswith(" --probability"):
            r = scan_rule(line, n + 1)
            out.append(Hop(n, r.target, r.probability, r.rcheck))
            continue
        end = line.find(" ", at + 4)
        prob = None
        p = line.find(" --probability ")
        if p >= 0:
            pend = line.find(" ", p + 15)
            try:
                prob = _checked(line[p + 15:] if pend < 0 else line[p + 15:pend])
            except ValueError as e:
                raise RulesParseError(f"line {n + 1}: {e}") from None
        out.append(Hop(n, line[at + 4:] if end < 0 else line[at + 4:end], prob,
                       " --rcheck" in line))
    return out


def _service_name(comment: str) -> str:
    for suffix in _ENTRY_SUFFIX:
        if comment.endswith(suffix):
            return comment[: -len(suffix)]
    return str(comment.split(" ", 1)[0])


def _endpoint_from_dnat(to: str, lineno: int) -> str:
    """``10.0.0.1:80`` or ``[fd00::1]:80`` → the report's endpoint key."""
    if to.startswith("["):
        host, sep, port = to[1:].partition("]:")
    else:
        host, sep, port = to.rpartition(":")
    if not sep or not port.isdigit():
        raise RulesParseError(f"line {lineno}: DNAT target {to!r} has no port")
    return endpoint_key(host, int(port))


_KINDS = {p: p + "*" for p in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-",
                               "KUBE-XLB-")}


def chain_kind(chain: str) -> str:
    """How ``ignored`` groups a chain: kube-proxy's per-service chains by prefix."""
    kind = _KINDS.get(chain[:9])
    if kind is not None:
        return kind
    return "KUBE-FW-*" if chain.startswith("KUBE-FW-") else chain


@dataclass
class _Dump:
    """kube-proxy's chains in the nat and filter tables, each its rules in order (as
    indexes into ``lines``: a line's number is its index plus one); a tally of every
    other rule."""

    lines: list[str] = field(default_factory=list)
    chains: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: {t: {} for t in TABLES})
    other: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    used: set[int] = field(default_factory=set)  # rules read into the model
    _scanned: dict[str, list[Hop]] = field(default_factory=dict)

    def rules(self, table: str, name: str) -> list[int]:
        return self.chains.get(table, {}).get(name, [])

    def scanned(self, name: str) -> list[Hop]:
        """A nat chain's rules, scanned once."""
        got = self._scanned.get(name)
        if got is None:
            got = self._scanned[name] = scan_chain(self.lines, self.rules("nat", name))
        return got


class _Restore:
    """Applies one table's lines to the dump, as iptables-restore would."""

    def __init__(self, dump: _Dump, table: str) -> None:
        self.dump, self.table = dump, table
        self.declared: set[str] = set()
        self.kept = dump.chains.get(table)  # None: a table natlens does not read

    def declare(self, name: str) -> None:
        self.declared.add(name)
        if self.kept is not None and name.startswith("KUBE-"):
            self.kept[name] = []  # declared (or re-declared) chains start empty

    def command(self, line: str, lineno: int) -> None:
        op, _, rest = line.partition(" ")
        chain, _, spec = rest.partition(" ")
        if op in ("-F", "-X") and not chain:  # every chain of the table
            for name in list(self.kept or ()):
                self._flush_or_delete(op, name)
            if op == "-X":
                self.declared &= BUILTIN
            return
        if op == "-N":
            self.declare(chain)
        elif op in ("-F", "-X"):  # a chain this input does not declare: nothing to do
            self._flush_or_delete(op, chain)
            if op == "-X":
                self.declared.discard(chain)
        elif op in ("-A", "-I", "-D"):
            self._rule(op, chain, spec, line, lineno)
        else:
            raise RulesParseError(f"line {lineno}: not iptables-save syntax: {line[:60]!r}")

    def _flush_or_delete(self, op: str, name: str) -> None:
        if self.kept is not None and name in self.kept:
            if op == "-F":
                self.kept[name] = []
            else:
                del self.kept[name]

    def _rule(self, op: str, chain: str, spec: str, line: str, lineno: int) -> None:
        if chain not in self.declared and chain.startswith("KUBE-"):
            raise RulesParseError(f"line {lineno}: rule for undeclared chain {chain!r}")
        if self.kept is None or not chain.startswith("KUBE-"):
            why = "" if self.kept is not None else "a table kube-proxy does not NAT in"
            self.dump.other[(self.table, chain_kind(chain), why)] += 1
            return
        rules = self.kept.setdefault(chain, [])
        if op == "-A":
            rules.append(lineno - 1)
        elif op == "-I":  # the line stays as written: scans read options, not the verb
            pos = spec.partition(" ")[0]
            rules.insert(int(pos) - 1 if pos.isdigit() else 0, lineno - 1)
        elif spec.isdigit() and 0 < int(spec) <= len(rules):
            del rules[int(spec) - 1]
        else:
            lines = self.dump.lines
            for i, n in enumerate(rules):
                if rule_spec(lines[n]) == spec:
                    del rules[i]
                    break


def rule_spec(line: str) -> str:
    """What follows ``-A CHAIN`` (or ``-I CHAIN [POS]``): the rule itself."""
    op, _, rest = line.partition(" ")
    _, _, spec = rest.partition(" ")
    if op == "-I":
        pos, _, tail = spec.partition(" ")
        return tail if pos.isdigit() else spec
    return spec


def read_dump(text: str) -> _Dump:
    dump = _Dump()
    table: _Restore | None = None
    seen_table = False
    kept: dict[str, list[int]] | None = None  # the open table's, if read
    get = None
    # iptables-save prints a chain's rules together: while lines start with the last
    # rule's "-A CHAIN ", one startswith per line places them (most of a big dump)
    prefix, append = "\n", None  # no line holds a newline: matches none
    dump.lines = lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            append(i)  # type: ignore[misc]
            continue
        if get is not None and line.startswith("-A "):  # nearly every line: a rule
            end = line.find(" ", 3)
            if end > 0:
                rules = get(line[3:end])
                if rules is not None:
                    rules.append(i)
                    prefix, append = line[:end + 1], rules.append
                    continue
            elif (rules := get(line[3:])) is not None:
                rules.append(i)
                continue
        prefix = "\n"
        lineno = i + 1
        line = line.strip()
        if not line or line[0] == "#":
            continue
        c = line[0]
        if c == "-":
            if table is None:
                raise RulesParseError(f"line {lineno}: rule outside a table")
            table.command(line, lineno)
        elif c == ":":
            if table is None:
                raise RulesParseError(f"line {lineno}: chain declared outside a table")
            end = line.find(" ")
            name = line[1:end] if end > 0 else line[1:]
            table.declared.add(name)
            if kept is not None and name[:5] == "KUBE-":
                kept[name] = []  # declared (or re-declared) chains start empty
        elif c == "*":
            if table is not None:
                raise RulesParseError(f"line {lineno}: table {line[1:]!r} starts before "
                                      f"table {table.table!r} was committed")
            table, seen_table = _Restore(dump, line[1:]), True
            kept = table.kept
            if kept is not None:
                kept.clear()
                get = kept.get
        elif line == "COMMIT":
            if table is None:
                raise RulesParseError(f"line {lineno}: COMMIT outside a table")
            table = kept = get = None
        else:
            raise RulesParseError(f"line {lineno}: not iptables-save syntax: {line[:60]!r}")
    if table is not None:
        raise RulesParseError(f"truncated dump: table {table.table!r} has no COMMIT")
    if not seen_table:
        raise RulesParseError("no tables in input: is this iptables-save output?")
    return dump


def _selection_chain(dump: _Dump, chain: str, lineno: int) -> str | None:
    """Follow FW/EXT/XLB hops to the chain that picks an endpoint (None: drops)."""
    for _ in range(8):
        if chain not in dump.chains["nat"]:
            raise RulesParseError(f"line {lineno}: jump to missing chain {chain!r}")
        rules = dump.scanned(chain)
        if chain.startswith(_SELECT_PREFIXES) and (
                any(r.target.startswith("KUBE-SEP-") for r in rules)
                or not chain.startswith("KUBE-XLB-")):
            return chain
        hops = [r for r in rules if r.target.startswith(_FOLLOW_PREFIXES)]
        dump.used.update(r.line for r in hops)
        if not hops:
            return None
        chain = hops[-1].target
    raise RulesParseError(f"line {lineno}: jump chain from {chain!r} is too deep")


def _endpoints(dump: _Dump, chain: str) -> tuple[str, tuple[DeclaredEndpoint, ...]]:
    affinity = "None"
    used = dump.used
    picks: list[Hop] = []
    for h in dump.scanned(chain):
        if h.target[:9] == "KUBE-SEP-":
            used.add(h.line)
            if h.rcheck:
                affinity = "ClientIP"
            else:
                picks.append(h)
    shares = float_shares(tuple(h.probability for h in picks))
    nat, lines = dump.chains["nat"], dump.lines
    out = []
    for h, share in zip(picks, shares, strict=True):
        rules = nat.get(h.target)
        if rules is None:
            raise RulesParseError(f"line {h.line + 1}: jump to missing chain {h.target!r}")
        n, key = _sep_fast(lines, rules)
        if not key:
            n, to = _dnat(lines, rules)
            if not to:
                raise RulesParseError(f"line {h.line + 1}: chain {h.target} has no DNAT rule")
            key = _endpoint_from_dnat(to, n + 1)
        used.add(n)
        out.append(DeclaredEndpoint(key, share, h.target))
    return affinity, tuple(out)


_DNAT_TO = " -j DNAT --to-destination "


def _sep_fast(lines: list[str], rules: list[int]) -> tuple[int, str]:
    """(index, endpoint key) of an endpoint chain's DNAT rule as kube-proxy writes it and
    iptables-save prints it: the chain's last rule, ``… -j DNAT --to-destination
    IPv4:PORT`` after the one quoted comment; (0, "") for anything else, which
    ``_dnat`` reads. Two searches from the end of the line instead of a scan: this runs
    for every endpoint of a node (bench/rules_parse.py)."""
    if not rules:
        return 0, ""
    n = rules[-1]
    text = lines[n]
    at = text.rfind(_DNAT_TO)
    if at < 0 or at < text.rfind('"') or text.count('"') not in (0, 2):
        return 0, ""
    to = text[at + 26:]
    colon = to.find(":")
    if colon < 0 or " " in to or "[" in to or to.find(":", colon + 1) >= 0:
        return 0, ""  # more options, IPv6, or no port: the general reading
    port = to[colon + 1:]
    if not port.isdigit() or (port[0] == "0" and port != "0"):
        return 0, ""
    for m in rules[:-1]:
        if " --to-destination " in lines[m]:
            return 0, ""  # an earlier DNAT rule would apply first
    return n, to


def _dnat(lines: list[str], rules: list[int]) -> tuple[int, str]:
    """(index, ``--to-destination``) of an endpoint chain's first DNAT rule, the one
    that applies; (0, ""). Written out for the common case (one quoted comment, as
    iptables-save prints every comment): 20,000 of these on a big node, where
    ``scan_rule`` for each cost a fifth of the command."""
    for n in rules:
        text = lines[n]
        if " --to-destination " not in text:
            continue  # KUBE-MARK-MASQ and the like
        q = text.find('"')
        if q >= 0:
            if text.count('"') != 2:
                r = scan_rule(text, n + 1)
                if r.target == "DNAT" and r.to_destination:
                    return n, r.to_destination
                continue
            text = text[:q] + text[text.rfind('"') + 1:]
        at = text.find(" --to-destination ")
        if at >= 0 and target_of(text, n + 1) == "DNAT":
            end = text.find(" ", at + 18)
            to = text[at + 18:] if end < 0 else text[at + 18:end]
            if to:
                return n, to
    return 0, ""


def _any_addr(endpoints: tuple[DeclaredEndpoint, ...], dump_is_v6: bool) -> str:
    v6 = endpoints[0].endpoint.startswith("[") if endpoints else dump_is_v6
    return "::" if v6 else "0.0.0.0"


Entry = tuple[str, str, str, int, str, str, int]  # name, kind, vip, port, proto, target, line


def _entries(dump: _Dump) -> list[Entry]:
    """The nat table's service entries: a ClusterIP (or external, load-balancer) port,
    or a node port, and the chain it jumps to."""
    out: list[Entry] = []
    for chain, kind in (("KUBE-SERVICES", ""), ("KUBE-NODEPORTS", "nodePort")):
        for n in dump.rules("nat", chain):
            r = parse_rule(tokenize(dump.lines[n]), n + 1)
            if not r.target.startswith(_FOLLOW_PREFIXES) or r.dport is None:
                continue
            if kind == "" and not r.dst:
                continue  # a jump without a ClusterIP is not an entry: counted as ignored
            k = kind or next((v for s, v in _ENTRY_SUFFIX.items() if r.comment.endswith(s)),
                             "clusterIP")
            out.append((_service_name(r.comment), k, r.dst, r.dport, r.proto or "tcp",
                        r.target, n + 1))
            dump.used.add(n)
    return out


def _no_endpoints(dump: _Dump) -> list[ServicePort]:
    """Ports with no endpoints at all: rejected in the filter table, not NATed."""
    out = []
    for chain, kind in (("KUBE-SERVICES", "clusterIP"), ("KUBE-EXTERNAL-SERVICES", "")):
        for n in dump.rules("filter", chain):
            r = parse_rule(tokenize(dump.lines[n]), n + 1)
            if not r.comment.endswith(" has no endpoints") or r.dport is None:
                continue
            dump.used.add(n)
            k = kind or ("nodePort" if r.dst_local or not r.dst else "externalIP")
            out.append(ServicePort(r.comment[: -len(" has no endpoints")], k, r.dst, r.dport,
                                   r.proto or "tcp"))
    return out


def _ignored(dump: _Dump) -> tuple[Ignored, ...]:
    """Every rule not on a service's path to an endpoint, by table, chain and reason."""
    tally = Counter(dump.other)
    lines, used = dump.lines, dump.used
    plumbing = "kube-proxy's own bookkeeping"
    marks: Counter[tuple[str, str]] = Counter()  # KUBE-MARK-MASQ rules, by table and kind
    for table, chains in dump.chains.items():
        for chain, rules in chains.items():
            rest = [n for n in rules if n not in used]
            if not rest:
                continue
            kind, select = chain_kind(chain), chain.startswith(_SELECT_PREFIXES)
            # most of them, one in every endpoint chain
            masq = sum(lines[n].endswith(" -j KUBE-MARK-MASQ") for n in rest)
            if masq:
                marks[(table, kind)] += masq
            if masq == len(rest):
                continue
            for n in rest:
                text = lines[n]
                if text.endswith(" -j KUBE-MARK-MASQ"):
                    continue
                # a rule of a selection chain is checked whole even when unused: a
                # malformed probability is an error wherever it stands
                target = (scan_rule(text, n + 1).target if select
                          else target_of(_unquoted(text), n + 1))
                why = (plumbing if target in _PLUMBING or target.startswith("KUBE-MARK-")
                       else "not a step to an endpoint natlens models")
                tally[(table, kind, why)] += 1
    for (table, kind), n in marks.items():
        tally[(table, kind, plumbing)] += n
    return tuple(Ignored(table, chain, why or "not a kube-proxy chain", n)
                 for (table, chain, why), n in sorted(tally.items()))


def parse_iptables_save(text: str) -> DeclaredModel:
    """The declared model of one ``iptables-save`` (or ``ip6tables-save``) dump, or of
    ``iptables-restore`` input."""
    with collection_paused():
        return _parse(text)


def _parse(text: str) -> DeclaredModel:
    dump = read_dump(text)
    entries = _entries(dump)
    no_endpoints = _no_endpoints(dump)
    is_v6 = any(":" in e[2] for e in entries) or any(":" in s.vip for s in no_endpoints)
    services: dict[tuple[str, str, str, int, str], ServicePort] = {}
    for name, kind, vip, port, proto, target, lineno in entries:
        chain = _selection_chain(dump, target, lineno)
        affinity, eps = ("None", ()) if chain is None else _endpoints(dump, chain)
        local = (chain is not None and chain.startswith(("KUBE-SVL-", "KUBE-XLB-"))) or (
            chain is None and target.startswith(("KUBE-EXT-", "KUBE-XLB-")))
        vip = vip or _any_addr(eps, is_v6)
        services[(name, kind, vip, port, proto)] = ServicePort(
            name, kind, vip, port, proto, affinity, "Local" if local else "Cluster", eps,
            chain or "")
    for sp in no_endpoints:
        if not sp.vip:
            sp = replace(sp, vip="::" if is_v6 else "0.0.0.0")
        services.setdefault((sp.service, sp.kind, sp.vip, sp.port, sp.protocol), sp)
    return DeclaredModel("iptables", tuple(services[k] for k in sorted(services)),
                         _ignored(dump), len(dump.used))
