"""``natlens query decisions``: which endpoint (and pod, at the time) each connection got."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any

from natlens.collector.query.names import PodNames, ServiceNames, closest
from natlens.collector.store.api import DecisionFilter, DecisionRecord, Store, Window
from natlens.errors import NatlensError
from natlens.proto.names import DECISION_EVENTS, endpoint_ip, endpoint_key, split_endpoint


class QueryError(NatlensError, ValueError):
    """A query that cannot be answered as asked (unknown service, bad filter)."""


@dataclass(frozen=True, kw_only=True)
class DecisionQuery:
    client: str | None = None
    service: str | None = None       # NS/NAME or NS/NAME:PORT
    endpoint: str | None = None      # IP or IP:PORT ([IPv6]:PORT)
    node: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    limit: int = 10_000
    source: str | None = None        # ebpf, netlink or pcap: a node watched by several
    pod: str | None = None           # NS/NAME: decisions to the IPs it held, while it did


def endpoint_filter(endpoint: str) -> dict[str, str]:
    """``--endpoint`` as a filter: an exact ``IP:PORT`` key, or every port of an IP."""
    if endpoint.startswith("[") or endpoint.count(":") == 1:
        try:
            ip, port = split_endpoint(endpoint)
        except ValueError:
            raise QueryError(f"--endpoint {endpoint!r} is not IP or IP:PORT") from None
        return {"endpoint": endpoint_key(ip, port)}
    try:
        return {"endpoint_ip": str(ipaddress.ip_address(endpoint))}
    except ValueError:
        raise QueryError(f"--endpoint {endpoint!r} is not IP or IP:PORT") from None


def query_decisions(store: Store, q: DecisionQuery) -> tuple[list[dict[str, Any]], bool]:
    """Matching decisions, oldest first, and whether ``limit`` cut the list short.
    Times are ns (``time_ns``); the caller formats them. A connection's DESTROY event is
    not listed: it is not a second decision (a client reusing a source port makes the
    kernel destroy the old entry mid-run)."""
    services = ServiceNames(store)
    ports = None
    if q.service:
        ports = frozenset(services.ports_of(q.service))
        if not ports:
            raise QueryError(f"no service {q.service!r} in the stored rules"
                             + closest(q.service, services.services()))
    if q.pod:
        return _of_pod(store, q, ports, services)
    f = DecisionFilter(
        Window(q.node, q.since_ns, q.until_ns), client=q.client, ports=ports,
        source=q.source, events=DECISION_EVENTS, limit=q.limit,
        **(endpoint_filter(q.endpoint) if q.endpoint else {}))
    rows = store.decisions(f)
    return _named(store, services, rows, q.limit, _ends(store, rows[:q.limit], f))


# A connection's DESTROY row is dated at the connection's start, as its decision is;
# the hook source dates its decision when it saw it and works out the start of a close
# from its duration, microseconds apart.
END_SLACK_NS = 1_000_000_000
_EndKey = tuple[str, str, str, int, str, int, int]


def _end_key(r: DecisionRecord) -> _EndKey:
    return (r.node, r.protocol, r.client_ip, r.client_port, r.vip, r.vip_port, r.ct_id)


def _ends(store: Store, rows: list[DecisionRecord], like: DecisionFilter,
          ) -> dict[_EndKey, DecisionRecord]:
    """Each listed connection's end, if it has ended: the DESTROY row with its id,
    client, VIP and node, found in one query over the rows' span."""
    if not rows:
        return {}
    lo = min(r.time_ns for r in rows) - END_SLACK_NS
    hi = max(r.time_ns for r in rows) + END_SLACK_NS
    nodes = {r.node for r in rows}
    wanted = {_end_key(r) for r in rows}
    found = store.decisions(replace(
        like, window=Window(next(iter(nodes)) if len(nodes) == 1 else None, lo, hi),
        events=("destroy",), limit=4 * len(rows) + 1000))
    return {k: r for r in found if (k := _end_key(r)) in wanted}


def _of_pod(store: Store, q: DecisionQuery, ports: frozenset[tuple[str, int, str]] | None,
            services: ServiceNames) -> tuple[list[dict[str, Any]], bool]:
    """Decisions to the addresses pod ``q.pod`` held, each kept only when the pod held
    the address at the decision's time (an IP is reused after its pod is gone)."""
    ns, _, name = (q.pod or "").partition("/")
    ips = sorted({iv.ip for iv in store.pods() if (iv.namespace, iv.name) == (ns, name)})
    if not ips:
        raise QueryError(f"no pod {q.pod!r} in the store (names come from the Kubernetes "
                         "watch, --kubeconfig/--in-cluster, or the lab)")
    rows = []
    for ip in ips:
        rows += store.decisions(DecisionFilter(
            Window(q.node, q.since_ns, q.until_ns), client=q.client, ports=ports,
            source=q.source, events=DECISION_EVENTS, limit=q.limit, endpoint_ip=ip))
    rows.sort(key=lambda r: r.time_ns)
    ends: dict[_EndKey, DecisionRecord] = {}
    for ip in ips:
        ends.update(_ends(store, [r for r in rows if endpoint_ip(r.endpoint) == ip],
                          DecisionFilter(client=q.client, ports=ports, source=q.source,
                                         endpoint_ip=ip, limit=q.limit)))
    found, _ = _named(store, services, rows, len(rows), ends)
    kept = [r for r in found if r["pod"] == q.pod]
    return kept[:q.limit], len(kept) > q.limit


def _named(store: Store, services: ServiceNames, rows: list[DecisionRecord], limit: int,
           ends: dict[_EndKey, DecisionRecord]) -> tuple[list[dict[str, Any]], bool]:
    """Rows as ``query decisions`` prints them, names at each decision's time, and the
    connection's end where it has one (times, bytes and packets: null while open)."""
    truncated = len(rows) > limit
    rows = rows[:limit]
    pods = PodNames(store, {endpoint_ip(r.endpoint) for r in rows})
    return [{
        "time_ns": r.time_ns, "node": r.node, "protocol": r.protocol,
        "client": endpoint_key(r.client_ip, r.client_port),
        "service": services.name(r.node, r.rules_hash, r.vip, r.vip_port, r.protocol,
                                 r.time_ns),
        "vip": endpoint_key(r.vip, r.vip_port), "endpoint": r.endpoint,
        "pod": pods.at(endpoint_ip(r.endpoint), r.time_ns),
        "rules_version": r.rules_hash, "source": r.source, "event": r.event,
        "ct_id": r.ct_id, **_end_of(ends.get(_end_key(r)))} for r in rows], truncated


def _end_of(end: DecisionRecord | None) -> dict[str, int | None]:
    if end is None:
        return {**dict.fromkeys(END_FIELDS), "closed": False}
    return {"end_ns": end.time_ns + end.duration_ns if end.duration_ns else None,
            "duration_ns": end.duration_ns or None, "orig_packets": end.orig_packets,
            "orig_bytes": end.orig_bytes, "reply_packets": end.reply_packets,
            "reply_bytes": end.reply_bytes, "closed": True}


END_FIELDS = ("end_ns", "duration_ns", "orig_packets", "orig_bytes", "reply_packets",
              "reply_bytes", "closed")
