"""``natlens query decisions``: which endpoint (and pod, at the time) each connection got."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlite_utils

from natlens.agent.rules.model import endpoint_key, split_endpoint
from natlens.collector.query.names import PodNames, ServiceNames
from natlens.collector.report.build import node_time_clauses, rfc3339


class QueryError(ValueError):
    """A query that cannot be answered as asked (unknown service, bad filter)."""


@dataclass(frozen=True)
class DecisionQuery:
    client: str | None = None
    service: str | None = None       # NS/NAME or NS/NAME:PORT
    endpoint: str | None = None      # IP or IP:PORT ([IPv6]:PORT)
    node: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int = 10_000
    source: str | None = None        # ebpf, netlink or pcap: a node watched by several


def _endpoint_clause(endpoint: str) -> tuple[str, list[Any]]:
    if endpoint.startswith("[") or endpoint.count(":") == 1:
        try:
            ip, port = split_endpoint(endpoint)
        except ValueError:
            raise QueryError(f"--endpoint {endpoint!r} is not IP or IP:PORT") from None
        return "endpoint = ?", [endpoint_key(ip, port)]
    import ipaddress

    try:
        ip = str(ipaddress.ip_address(endpoint))
    except ValueError:
        raise QueryError(f"--endpoint {endpoint!r} is not IP or IP:PORT") from None
    prefix = f"[{ip}]:" if ":" in ip else f"{ip}:"
    return "substr(endpoint, 1, ?) = ?", [len(prefix), prefix]


def query_decisions(db: sqlite_utils.Database, q: DecisionQuery) -> tuple[list[dict[str, Any]],
                                                                         bool]:
    """Matching decisions, oldest first, and whether ``limit`` cut the list short."""
    clauses, args = node_time_clauses(q.node, q.since_ns, q.until_ns)
    clauses.insert(0, "1")
    services = ServiceNames(db)
    if q.client:
        clauses.append("client_ip = ?")
        args.append(q.client)
    if q.source:
        clauses.append("source = ?")
        args.append(q.source)
    if q.endpoint:
        c, a = _endpoint_clause(q.endpoint)
        clauses.append(c)
        args += a
    if q.service:
        ports = services.ports_of(q.service)
        if not ports:
            raise QueryError(f"no service {q.service!r} in the stored rules")
        clauses.append("(" + " OR ".join("(vip = ? AND vip_port = ? AND protocol = ?)"
                                         for _ in ports) + ")")
        args += [x for p in sorted(ports) for x in p]
    rows = db.execute(
        "SELECT time_ns, node, protocol, client_ip, client_port, vip, vip_port, endpoint, "
        "rules_hash, source, event, ct_id FROM decisions WHERE " + " AND ".join(clauses)
        + " ORDER BY time_ns LIMIT ?", [*args, q.limit + 1]).fetchall()
    truncated = len(rows) > q.limit
    rows = rows[:q.limit]
    pods = PodNames(db, {r[7].rsplit(":", 1)[0].strip("[]") for r in rows})
    out = []
    for t, node, proto, cip, cport, vip, vport, ep, h, source, event, ct_id in rows:
        out.append({
            "time": rfc3339(t), "time_ns": t, "node": node, "protocol": proto,
            "client": endpoint_key(cip, cport),
            "service": services.name(node, h, vip, vport, proto, t),
            "vip": endpoint_key(vip, vport), "endpoint": ep,
            "pod": pods.at(ep.rsplit(":", 1)[0].strip("[]"), t),
            "rules_version": h, "source": source, "event": event, "ct_id": ct_id})
    return out, truncated
