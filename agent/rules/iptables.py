"""Parse ``iptables-save`` (or ``ip6tables-save``) into the declared model.

It reads kube-proxy's iptables-mode chains, old and new layouts alike:
``KUBE-SERVICES``/``KUBE-NODEPORTS`` entries → (``KUBE-FW``/``KUBE-EXT``/``KUBE-XLB``) →
``KUBE-SVC``/``KUBE-SVL`` (the selection chain, with ``statistic`` and ``recent``
rules) → ``KUBE-SEP`` (the DNAT). Rules that are not kube-proxy's are ignored here:
foreign NAT rules show up as *undeclared* traffic in the report, which is the point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from natlens.agent.rules.model import DeclaredEndpoint, DeclaredModel, ServicePort
from natlens.agent.rules.probability import effective_shares, kernel_probability
from natlens.errors import NatlensError
from natlens.proto.names import endpoint_key


class RulesParseError(NatlensError, ValueError):
    """A dump natlens cannot trust: the message names the line and what is wrong."""


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_ENTRY_SUFFIX = {" cluster IP": "clusterIP", " external IP": "externalIP",
                 " loadbalancer IP": "loadBalancer"}
_SELECT_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")
_FOLLOW_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")


@dataclass(slots=True)
class Rule:
    line: int
    target: str = ""
    comment: str = ""
    dst: str = ""
    proto: str = ""
    dport: int = 0
    probability: Fraction | None = None
    rcheck: bool = False
    to_destination: str = ""
    dst_local: bool = False


def tokenize(text: str) -> list[str]:
    if '"' not in text:
        return text.split()
    return [b or q.replace('\\"', '"') for q, b in _TOKEN.findall(text)]


def _strip_prefix_len(addr: str) -> str:
    host, _, plen = addr.partition("/")
    if plen and plen not in ("32", "128"):
        return addr
    return host


def parse_rule(tokens: list[str], lineno: int) -> Rule:
    """Pick the options kube-proxy uses out of one ``-A`` rule, in any order."""
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
                r.probability = kernel_probability(float(tokens[i + 1]))
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


class _Dump:
    """Rules of the nat and filter tables, grouped by chain, in order."""

    def __init__(self) -> None:
        self.chains: dict[str, dict[str, list[Rule]]] = {"nat": {}, "filter": {}}

    def chain(self, table: str, name: str) -> list[Rule]:
        return self.chains.get(table, {}).get(name, [])


def read_dump(text: str) -> _Dump:
    dump = _Dump()
    table: str | None = None
    seen_table = False
    declared: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        c = line[0]
        if c == "*":
            if table is not None:
                raise RulesParseError(f"line {lineno}: table {line[1:]!r} starts before "
                                      f"table {table!r} was committed")
            table, seen_table, declared = line[1:], True, set()
            if table in dump.chains:
                dump.chains[table] = {}
        elif c == ":":
            if table is None:
                raise RulesParseError(f"line {lineno}: chain declared outside a table")
            name = line[1:].split(" ", 1)[0]
            declared.add(name)
            if table in dump.chains and name.startswith("KUBE-"):
                dump.chains[table].setdefault(name, [])  # declared and empty is a chain
        elif line == "COMMIT":
            if table is None:
                raise RulesParseError(f"line {lineno}: COMMIT outside a table")
            table = None
        elif line.startswith("-A "):
            if table is None:
                raise RulesParseError(f"line {lineno}: rule outside a table")
            if table not in dump.chains:
                continue
            chain = line[3:].split(" ", 1)[0]
            if not chain.startswith("KUBE-"):
                continue
            if chain not in declared:
                raise RulesParseError(f"line {lineno}: rule for undeclared chain {chain!r}")
            tokens = tokenize(line)
            dump.chains[table].setdefault(chain, []).append(parse_rule(tokens, lineno))
        else:
            raise RulesParseError(f"line {lineno}: not iptables-save syntax: {line[:60]!r}")
    if table is not None:
        raise RulesParseError(f"truncated dump: table {table!r} has no COMMIT")
    if not seen_table:
        raise RulesParseError("no tables in input: is this iptables-save output?")
    return dump


def _selection_chain(dump: _Dump, chain: str, lineno: int) -> str | None:
    """Follow FW/EXT/XLB hops to the chain that picks an endpoint (None: drops)."""
    for _ in range(8):
        rules = dump.chain("nat", chain)
        if chain not in dump.chains["nat"]:
            raise RulesParseError(f"line {lineno}: jump to missing chain {chain!r}")
        if chain.startswith(_SELECT_PREFIXES) and (
                any(r.target.startswith("KUBE-SEP-") for r in rules)
                or not chain.startswith("KUBE-XLB-")):
            return chain
        nxt = [r.target for r in rules if r.target.startswith(_FOLLOW_PREFIXES)]
        if not nxt:
            return None
        chain = nxt[-1]
    raise RulesParseError(f"line {lineno}: jump chain from {chain!r} is too deep")


def _endpoints(dump: _Dump, chain: str) -> tuple[str, tuple[DeclaredEndpoint, ...]]:
    affinity = "None"
    picks: list[tuple[str, Fraction | None, int]] = []
    for r in dump.chain("nat", chain):
        if not r.target.startswith("KUBE-SEP-"):
            continue
        if r.rcheck:
            affinity = "ClientIP"
            continue
        picks.append((r.target, r.probability, r.line))
    shares = effective_shares([p for _, p, _ in picks])
    out = []
    for (sep, _, lineno), share in zip(picks, shares, strict=True):
        dnat = [r for r in dump.chain("nat", sep) if r.target == "DNAT"]
        if sep not in dump.chains["nat"]:
            raise RulesParseError(f"line {lineno}: jump to missing chain {sep!r}")
        if not dnat or not dnat[0].to_destination:
            raise RulesParseError(f"line {lineno}: chain {sep} has no DNAT rule")
        out.append(DeclaredEndpoint(_endpoint_from_dnat(dnat[0].to_destination,
                                                        dnat[0].line),
                                    float(share), sep))
    return affinity, tuple(out)


def _any_addr(endpoints: tuple[DeclaredEndpoint, ...], dump_is_v6: bool) -> str:
    v6 = endpoints[0].endpoint.startswith("[") if endpoints else dump_is_v6
    return "::" if v6 else "0.0.0.0"


def parse_iptables_save(text: str) -> DeclaredModel:
    """The declared model of one ``iptables-save`` (or ``ip6tables-save``) dump."""
    dump = read_dump(text)
    is_v6 = any(":" in r.dst for rules in dump.chains["nat"].values() for r in rules)
    services: dict[tuple[str, str, str, int, str], ServicePort] = {}
    entries: list[tuple[str, str, str, int, str, str, int]] = []
    for r in dump.chain("nat", "KUBE-SERVICES"):
        if r.target.startswith(_FOLLOW_PREFIXES) and r.dst and r.dport:
            kind = next((k for s, k in _ENTRY_SUFFIX.items() if r.comment.endswith(s)),
                        "clusterIP")
            entries.append((_service_name(r.comment), kind, r.dst, r.dport,
                            r.proto or "tcp", r.target, r.line))
    for r in dump.chain("nat", "KUBE-NODEPORTS"):
        if r.target.startswith(_FOLLOW_PREFIXES) and r.dport:
            entries.append((_service_name(r.comment), "nodePort", r.dst, r.dport,
                            r.proto or "tcp", r.target, r.line))
    for name, kind, vip, port, proto, target, lineno in entries:
        chain = _selection_chain(dump, target, lineno)
        affinity, eps = ("None", ()) if chain is None else _endpoints(dump, chain)
        local = (chain is not None and chain.startswith(("KUBE-SVL-", "KUBE-XLB-"))) or (
            chain is None and target.startswith(("KUBE-EXT-", "KUBE-XLB-")))
        vip = vip or _any_addr(eps, is_v6)
        key = (name, kind, vip, port, proto)
        services[key] = ServicePort(name, kind, vip, port, proto, affinity,
                                    "Local" if local else "Cluster", eps, chain or "")
    # Ports with no endpoints at all are rejected in the filter table, not NATed.
    for chain, kind in (("KUBE-SERVICES", "clusterIP"), ("KUBE-EXTERNAL-SERVICES", "")):
        for r in dump.chain("filter", chain):
            if not r.comment.endswith(" has no endpoints") or not r.dport:
                continue
            k = kind or ("nodePort" if r.dst_local or not r.dst else "externalIP")
            vip = r.dst or ("::" if is_v6 else "0.0.0.0")
            name = r.comment[: -len(" has no endpoints")]
            key = (name, k, vip, r.dport, r.proto or "tcp")
            services.setdefault(key, ServicePort(name, k, vip, r.dport, r.proto or "tcp"))
    return DeclaredModel("iptables", tuple(services[k] for k in sorted(services)))

