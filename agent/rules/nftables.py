"""kube-proxy's nftables ruleset (``nft list table ip kube-proxy`` or ``nft list
ruleset``, as text or with ``-j`` as JSON) → the declared model.

The ``service-ips`` verdict map sends each ClusterIP/ExternalIP (VIP . protocol . port)
to a ``service-…`` chain (or an ``external-…`` one), ``service-nodeports`` sends node
ports to ``external-…`` chains, and a service chain picks its endpoint with ``numgen
random mod N vmap { 0 : goto endpoint-…, … }`` (or a plain ``goto`` for one endpoint).
``numgen`` is uniform over 0..N−1, so an endpoint's share is exactly the number of
slots that lead to it over N. Endpoint chains end in ``dnat to IP:PORT``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from natlens.agent.rules.model import (
    DeclaredEndpoint,
    DeclaredModel,
    Ignored,
    ServicePort,
)
from natlens.errors import NatlensError
from natlens.proto.names import endpoint_key


class NftParseError(NatlensError, ValueError):
    """The text is not an nftables listing natlens understands; says where."""


@dataclass
class _Table:
    family: str
    chains: dict[str, list[str]] = field(default_factory=dict)
    elements: dict[str, list[str]] = field(default_factory=dict)
    maps: set[str] = field(default_factory=set)  # verdict maps (their elements are rules)
    used: set[tuple[str, int]] = field(default_factory=set)  # (chain or map, index) read

    def rules(self) -> int:
        return (sum(len(r) for r in self.chains.values())
                + sum(len(self.elements.get(m, [])) for m in self.maps))


_BLOCK = re.compile(r"^(chain|map|set)\s+(\S+)\s*\{$")
_NUMGEN = re.compile(r"numgen random mod (\d+) vmap \{ (.*) \}")
_VMAP_ITEM = re.compile(r"^(\d+)(?:-(\d+))?\s*:\s*(?:goto|jump)\s+(\S+)$")
_GOTO = re.compile(r"(?:^|\s)goto (\S+)$")
_UNCONDITIONAL_GOTO = re.compile(r"^goto (\S+)$")
_COMMENT = re.compile(r'\s*comment "(?:[^"\\]|\\.)*"$')
_DNAT = re.compile(r"dnat (?:ip6? )?to (\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)")
_SERVICE_ELEMENT = re.compile(
    r'^(\S+) \. (\w+) \. (\d+)(?: comment "[^"]*")? : (?:goto|jump) (\S+)$')
_NODEPORT_ELEMENT = re.compile(r'^(\w+) \. (\d+)(?: comment "[^"]*")? : (?:goto|jump) (\S+)$')
_NO_ENDPOINT_SERVICE = re.compile(
    r'^(?P<vip>\S+) \. (?P<proto>\w+) \. (?P<port>\d+)(?: comment "(?P<comment>[^"]*)")? : .+$')
_NO_ENDPOINT_NODEPORT = re.compile(
    r'^(?P<proto>\w+) \. (?P<port>\d+)(?: comment "(?P<comment>[^"]*)")? : .+$')
_PORT_CHAIN = re.compile(r"^(service|external|endpoint|local|firewall)-[A-Z2-7]{8}-")
_PORT_NAME = re.compile(r"^(?:service|external)-[A-Z2-7]{8}-([^/]+)/([^/]+)/(\w+)/(.*)$")


def _split_elements(text: str) -> list[str]:
    """Top-level comma-separated elements, commas inside quotes kept."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _tables(text: str) -> list[_Table]:
    tables: list[_Table] = []
    table: _Table | None = None
    block: tuple[str, str] | None = None
    collecting: list[str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if collecting is not None:  # inside "elements = { …" spanning lines
            collecting.append(line)
            joined = " ".join(collecting)
            if joined.count("{") == joined.count("}"):
                assert table is not None and block is not None
                inner = joined[joined.index("{") + 1:joined.rindex("}")]
                table.elements[block[1]] = _split_elements(inner)
                collecting = None
            continue
        if table is None:
            m = re.match(r"^table (ip6?|inet) (\S+) \{$", line)
            if not m:
                raise NftParseError(f"line {n}: expected 'table FAMILY NAME {{', got {line!r}")
            table = _Table(m.group(1)) if m.group(2) == "kube-proxy" else _Table("ignored")
            continue
        if block is None:
            if line == "}":
                if table.family != "ignored":
                    tables.append(table)
                table = None
                continue
            m = _BLOCK.match(line)
            if m:
                block = (m.group(1), m.group(2))
                if m.group(1) == "chain":
                    table.chains[m.group(2)] = []
                elif m.group(1) == "map":
                    table.maps.add(m.group(2))
                continue
            if line.startswith(("comment ", "flags ")):
                continue
            raise NftParseError(f"line {n}: unexpected {line!r} in table")
        if line == "}":
            block = None
        elif block[0] == "chain":
            if not line.startswith(("type ", "policy ")):
                table.chains[block[1]].append(line)
        elif line.startswith("elements = {"):
            collecting = [line]
            if line.count("{") == line.count("}"):
                table.elements[block[1]] = _split_elements(line[line.index("{") + 1:
                                                                line.rindex("}")])
                collecting = None
    if table is not None or block is not None or collecting is not None:
        raise NftParseError("truncated: a table, chain or map is not closed")
    return tables


def _service_name(chain: str) -> tuple[str, str]:
    """(``ns/name:port``, protocol) from ``service-HASH-ns/name/proto/port``."""
    m = _PORT_NAME.match(chain)
    if not m:
        raise NftParseError(f"chain {chain!r} is not named like kube-proxy's service chains")
    ns, name, proto, port = m.groups()
    return f"{ns}/{name}:{port}" if port else f"{ns}/{name}", proto


def _endpoints(t: _Table, chain: str) -> tuple[tuple[DeclaredEndpoint, ...], str]:
    """The endpoints a service chain picks from, with exact shares, and its affinity."""
    rules = t.chains.get(chain)
    if rules is None:
        raise NftParseError(f"chain {chain!r} is referenced but not listed")
    affinity = "None"
    slots: Counter[str] = Counter()
    total = 0
    for i, r in enumerate(rules):
        if "@affinity-" in r:
            affinity = "ClientIP"
            t.used.add((chain, i))
            continue
        m = _NUMGEN.search(r)
        g = None if m else _GOTO.search(r)
        if m:
            total = int(m.group(1))
            for item in _split_elements(m.group(2)):
                im = _VMAP_ITEM.match(item)
                if not im:
                    raise NftParseError(f"chain {chain!r}: vmap element {item!r} not understood")
                lo = int(im.group(1))
                hi = int(im.group(2)) if im.group(2) else lo
                slots[im.group(3)] += hi - lo + 1
        elif g and g.group(1).startswith("endpoint-"):
            slots[g.group(1)], total = 1, 1
        else:
            continue
        t.used.add((chain, i))
        break
    if total and sum(slots.values()) != total:
        raise NftParseError(f"chain {chain!r}: numgen mod {total} maps "
                            f"{sum(slots.values())} slots")
    eps = [DeclaredEndpoint(_dnat(t, ep_chain), k / total, ep_chain)
           for ep_chain, k in slots.items()]
    return tuple(sorted(eps, key=lambda e: e.endpoint)), affinity


def _dnat(t: _Table, ep_chain: str) -> str:
    """An endpoint chain's ``dnat to`` target (the last one)."""
    target = None
    for i, r in enumerate(t.chains.get(ep_chain, [])):
        d = _DNAT.search(r)
        if d:
            target = endpoint_key(d.group(1).strip("[]"), int(d.group(2)))
            at = i
    if target is None:
        raise NftParseError(f"endpoint chain {ep_chain!r} has no 'dnat to'")
    t.used.add((ep_chain, at))
    return target


def _resolve(t: _Table, chain: str) -> tuple[str | None, str]:
    """An ``external-…`` chain's selection chain and traffic policy.

    Cluster policy ends in an unconditional ``goto service-…``; Local policy in
    ``goto local-…`` (the local endpoints only), or in nothing when the node has no
    local endpoint: then only pod and node-local traffic, short-circuited by
    conditional gotos, reaches an endpoint, and outside traffic is dropped (None)."""
    if chain.startswith("service-"):
        return chain, "Cluster"
    rules = t.chains.get(chain)
    if rules is None:
        raise NftParseError(f"chain {chain!r} is referenced but not listed")
    for i in range(len(rules) - 1, -1, -1):
        g = _UNCONDITIONAL_GOTO.match(_COMMENT.sub("", rules[i]))
        if g:
            t.used.add((chain, i))
            target = g.group(1)
            return target, "Cluster" if target.startswith("service-") else "Local"
    if any(_GOTO.search(_COMMENT.sub("", r)) for r in rules):
        return None, "Local"
    raise NftParseError(f"chain {chain!r} leads to no service chain")


def _verdict(v: Any) -> str:
    for kind in ("goto", "jump"):
        if isinstance(v, dict) and kind in v:
            return f"{kind} {v[kind]['target']}"
    if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in _SIMPLE_VERDICTS:
        return str(next(iter(v)))  # drop/reject/accept in the no-endpoint maps
    raise NftParseError(f"verdict {v!r} not understood")


_SIMPLE_VERDICTS = ("drop", "accept", "reject", "return", "continue")


def _rule_text(expr: list[Any], family: str) -> str:
    """The parts of a JSON rule the model needs, written as the text form prints them."""
    parts = []
    for e in expr:
        if "@affinity-" in json.dumps(e):
            parts.append("@affinity-")
        elif "match" in e:
            parts.append("match")  # a condition: a goto after it is not unconditional
        if "vmap" in e and "numgen" in e["vmap"].get("key", {}):
            ng = e["vmap"]["key"]["numgen"]
            items = []
            for key, verdict in e["vmap"]["data"]["set"]:
                rng = f"{key['range'][0]}-{key['range'][1]}" if isinstance(key, dict) else key
                items.append(f"{rng} : {_verdict(verdict)}")
            parts.append(f"numgen {ng['mode']} mod {ng['mod']} vmap {{ {', '.join(items)} }}")
        elif "goto" in e or "jump" in e:
            parts.append(_verdict(e))
        elif "dnat" in e:
            addr = e["dnat"]["addr"]
            parts.append(f"dnat to {f'[{addr}]' if ':' in addr else addr}:{e['dnat']['port']}")
    return " ".join(parts)


def _element_text(el: Any) -> str:
    """A set or map element of ``nft -j`` written as the text listing writes it."""
    if not isinstance(el, list):
        return str(el)
    key, verdict = el  # map: [key, verdict]
    comment = ""
    if isinstance(key, dict) and "elem" in key:  # an element with a comment
        comment = f' comment "{key["elem"].get("comment", "")}"'
        key = key["elem"]["val"]
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    return " . ".join(str(p) for p in parts) + comment + " : " + _verdict(verdict)


def _tables_json(text: str) -> list[_Table]:
    """``nft -j list table …`` / ``nft -j list ruleset`` as the same tables."""
    try:
        return _tables_json_unchecked(text)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        if isinstance(e, NftParseError):
            raise
        raise NftParseError(f"nft JSON not understood: {type(e).__name__}: {e}") from None


def _tables_json_unchecked(text: str) -> list[_Table]:
    try:
        objects = json.loads(text)["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise NftParseError(f"not nft JSON output: {e}") from None
    if not isinstance(objects, list) or not all(isinstance(o, dict) and len(o) == 1
                                                for o in objects):
        raise NftParseError("not nft JSON output: 'nftables' is not a list of objects")
    tables: dict[tuple[str, str], _Table] = {}
    for o in objects:
        (kind, body), = o.items()
        if not isinstance(body, dict) or body.get("table", body.get("name")) is None:
            continue
        family = body.get("family", "")
        name = body["name"] if kind == "table" else body.get("table")
        if name != "kube-proxy" or family not in ("ip", "ip6", "inet"):
            continue
        t = tables.setdefault((family, name), _Table(family))
        if kind == "chain":
            t.chains.setdefault(body["name"], [])
        elif kind == "rule":
            t.chains.setdefault(body["chain"], []).append(_rule_text(body["expr"], family))
        elif kind in ("set", "map"):
            if kind == "map":
                t.maps.add(body["name"])
            t.elements[body["name"]] = [_element_text(el) for el in body.get("elem", [])]
    return list(tables.values())


def _service_ports(t: _Table) -> list[ServicePort]:
    """ClusterIP, external and load-balancer IPs (``service-ips``), then node ports."""
    out = []
    cluster_ips = set(t.elements.get("cluster-ips", []))
    for i, el in enumerate(t.elements.get("service-ips", [])):
        m = _SERVICE_ELEMENT.match(el)
        if not m:
            raise NftParseError(f"service-ips element {el!r} not understood")
        vip, proto, port, target = m.groups()
        kind = "clusterIP" if vip in cluster_ips and target.startswith("service-") \
            else "externalIP"
        out.append(_port(t, kind, vip, int(port), proto, target))
        t.used.add(("service-ips", i))
    for i, el in enumerate(t.elements.get("service-nodeports", [])):
        m = _NODEPORT_ELEMENT.match(el)
        if not m:
            raise NftParseError(f"service-nodeports element {el!r} not understood")
        proto, port, target = m.groups()
        out.append(_port(t, "nodePort", "::" if t.family == "ip6" else "0.0.0.0", int(port),
                         proto, target))
        t.used.add(("service-nodeports", i))
    return out


def _port(t: _Table, kind: str, vip: str, port: int, proto: str, target: str) -> ServicePort:
    chain, policy = _resolve(t, target)
    name, _ = _service_name(target)
    eps, affinity = _endpoints(t, chain) if chain else ((), "None")
    return ServicePort(name, kind, vip, port, proto, affinity, policy, eps, chain or "")


def _no_endpoints(t: _Table, known: set[tuple[str, int, str]]) -> list[ServicePort]:
    """``no-endpoint-services`` and ``no-endpoint-nodeports``: service ports with no
    endpoint, which kube-proxy drops or rejects. A port the service maps already hold
    is a Local-policy port with no local endpoint, already modeled."""
    out = []
    cluster_ips = set(t.elements.get("cluster-ips", []))
    any_addr = "::" if t.family == "ip6" else "0.0.0.0"
    for name, pattern in (("no-endpoint-services", _NO_ENDPOINT_SERVICE),
                          ("no-endpoint-nodeports", _NO_ENDPOINT_NODEPORT)):
        for i, el in enumerate(t.elements.get(name, [])):
            m = pattern.match(el)
            if not m:
                raise NftParseError(f"{name} element {el!r} not understood")
            g = m.groupdict()
            vip, port, proto = g.get("vip") or any_addr, int(g["port"]), g["proto"]
            t.used.add((name, i))
            if (vip, port, proto) in known:
                continue
            kind = ("nodePort" if name == "no-endpoint-nodeports" else
                    "clusterIP" if vip in cluster_ips else "externalIP")
            service = g["comment"] or f"{endpoint_key(vip, port)}/{proto}"
            out.append(ServicePort(service, kind, vip, port, proto))
            known.add((vip, port, proto))
    return out


def _ignored(t: _Table) -> list[tuple[str, str]]:
    """(chain or map kind, reason) of every rule and verdict-map element not read."""
    out = []
    for chain, rules in t.chains.items():
        kind = chain.split("-", 1)[0] + "-*" if _PORT_CHAIN.match(chain) else chain
        out += [(kind, "kube-proxy's own bookkeeping") for i in range(len(rules))
                if (chain, i) not in t.used]
    for m in t.maps:
        out += [(m, "not a step to an endpoint natlens models")
                for i in range(len(t.elements.get(m, []))) if (m, i) not in t.used]
    return out


def parse_nft(text: str) -> DeclaredModel:
    """The model of an nftables listing, text (``nft list``) or JSON (``nft -j list``)."""
    tables = _tables_json(text) if text.lstrip().startswith("{") else _tables(text)
    services: list[ServicePort] = []
    tally: Counter[tuple[str, str, str]] = Counter()
    modeled = 0
    for t in tables:
        ports = _service_ports(t)
        ports += _no_endpoints(t, {(s.vip, s.port, s.protocol) for s in ports})
        services += ports
        modeled += len(t.used)
        for kind, why in _ignored(t):
            tally[(f"{t.family} kube-proxy", kind, why)] += 1
    services.sort(key=lambda s: (s.service, s.kind, s.vip, s.port, s.protocol))
    return DeclaredModel("nftables", tuple(services),
                         tuple(Ignored(*k, n) for k, n in sorted(tally.items())), modeled)
