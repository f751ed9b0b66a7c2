"""Results in the shapes the contracts give them (docs/report.md, docs/operations.md):
numbers rounded as documented, times as RFC 3339, names beside addresses.

Everything below ``report/`` works in ns and plain counts; this is where they become
what a person or another tool reads.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from natlens.collector.analyze.distance import tvd
from natlens.collector.analyze.homogeneity import homogeneity
from natlens.collector.analyze.judge import Judgement
from natlens.collector.analyze.sources import OLDER
from natlens.collector.query.agreement import NodeAgreement
from natlens.collector.query.names import PodNames
from natlens.collector.query.observations import Observations
from natlens.collector.store.api import Lost, PortKey
from natlens.proto.names import endpoint_ip, endpoint_key
from natlens.timeparse import rfc3339


def entry_json(key: PortKey, sp: dict[str, Any], j: Judgement, obs: Observations,
               pods: PodNames, weight: str) -> dict[str, Any]:
    """One service port's entry, without its test and verdict (``test_json``)."""
    at = obs.last_ns.get(key, 0)  # pods are named as they were at the last decision
    chains = {e["endpoint"]: e["chain"] for e in sp["endpoints"]}
    for e in j.endpoints:
        e["pod"] = pods.at(endpoint_ip(e["endpoint"]), at)
        e["chain"] = chains.get(e["endpoint"])
    for u in j.undeclared:
        u["pod"] = pods.at(endpoint_ip(u["endpoint"]), at)
    counted = obs.counted[key]
    entry: dict[str, Any] = {
        "service": sp["service"], "kind": sp["kind"], "vip": key.vip, "port": key.port,
        "protocol": key.protocol, "node": key.node, "rules_version": key.rules_hash,
        "affinity": sp["affinity"], "policy": sp["policy"], "chain": sp.get("chain", ""),
        "scheduler": sp.get("scheduler", "random"), "total": j.total, "source": counted,
        "endpoints": j.endpoints, "undeclared": j.undeclared, "test": None, "verdict": "",
        "reasons": j.reasons}
    if sp["affinity"] == "ClientIP":
        # the test judges first connections per client; what happened is every connection
        entry["counted"] = "first connection per client"
        entry["connections"] = dict(sorted(obs.counts[key].items()))
    others = obs.by_source[key]
    if len([src for src in others if src != OLDER]) > 1:
        entry["sources"] = {src: sum(c.values()) for src, c in sorted(others.items())
                            if src != OLDER}
    if key in obs.sampled:
        entry["sampled"] = obs.sampled[key]
    declared = {e["endpoint"]: e["declared"] for e in j.endpoints}
    entry["tvd"] = tvd({e["endpoint"]: e["observed"] for e in j.endpoints + j.undeclared},
                       declared)
    _add_bytes(entry, obs.bytes.get(key, {}), declared, weight)
    return entry


# Said instead of a distance by bytes that has nothing to measure: bytes come from
# closes (DESTROY events), which the hook source reads only with agent --closes.
BYTES_UNKNOWN = ("no connection closed with byte counts in the window: agents on the "
                 "hook source read closes only with --closes")


def _add_bytes(entry: dict[str, Any], by_ep: dict[str, int], declared: dict[str, float],
               weight: str) -> None:
    total = sum(by_ep.values())
    entry["bytes"] = total
    for e in entry["endpoints"]:
        e["bytes"] = by_ep.get(e["endpoint"], 0)
        e["byte_share"] = round(e["bytes"] / total, 6) if total else 0.0
    if weight == "bytes":
        entry["tvd_bytes"] = tvd(by_ep, declared)
        if not total and entry["total"]:
            entry["bytes_unknown"] = BYTES_UNKNOWN


def test_json(j: Judgement, p_adjusted: float | None) -> dict[str, Any] | None:
    if j.test is not None:
        return {"method": j.test.method, "statistic": round(j.test.statistic, 6),
                "dof": j.test.dof, "p_value": j.test.p_value, "p_value_holm": p_adjusted}
    if j.rotation is not None:
        return {"method": "rotation", "statistic": round(j.rotation.statistic, 6),
                "dof": None, "p_value": None, "p_value_holm": None,
                "bounds": list(j.rotation.bounds)}
    return None


def comparisons(entries: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Each service port seen from several nodes, with the test of homogeneity."""
    groups: dict[tuple[Any, ...], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int)))
    for e in entries:
        key = (e["service"], e["vip"], e["port"], e["protocol"])
        for ep in e["endpoints"] + e["undeclared"]:
            groups[key][e["node"]][ep["endpoint"]] += ep["observed"]
    out = []
    for (service, vip, port, proto), by_node in sorted(groups.items()):
        if len(by_node) < 2:
            continue
        h = homogeneity(by_node, alpha)
        out.append({"service": service, "vip": vip, "port": port, "protocol": proto,
                    "nodes": {n: dict(sorted(by_node[n].items())) for n in sorted(by_node)},
                    "test": None if h is None else {
                        "method": "chi-square homogeneity",
                        "statistic": round(h.statistic, 6), "dof": h.dof,
                        "p_value": h.p_value},
                    "verdict": "insufficient-data" if h is None else h.verdict})
    return out


def lost_json(lost: list[Lost]) -> list[dict[str, Any]]:
    return [{"node": x.node, "source": x.source, "reason": x.reason, "count": x.events,
             "recovered": x.recovered} for x in lost]


def decisions_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``query decisions`` rows with their time as RFC 3339 first, and the end's, the
    duration and the bytes each way as the table shows them."""
    return [{"time": rfc3339(r["time_ns"]), **r,
             "ended": rfc3339(r["end_ns"]) if r.get("end_ns") else None,
             "duration": f"{r['duration_ns'] / 1e9:.3f}s" if r.get("duration_ns") else None,
             "bytes": f"{r['orig_bytes']}/{r['reply_bytes']}" if r.get("closed") else None}
            for r in rows]


def rules_later(node: str, first_ns: int, at_ns: int) -> str:
    """Why ``query rules`` has no answer: the node's rules begin after the time asked."""
    return f"node {node!r} sent its first rules at {rfc3339(first_ns)}, after {rfc3339(at_ns)}"


def rules_json(r: dict[str, Any]) -> dict[str, Any]:
    """``query rules``: the model with when it took effect and was replaced."""
    head = {"node": r["node"], "at": rfc3339(r["at_ns"]),
            "in_force_from": rfc3339(r["in_force_from_ns"]),
            "replaced_at": rfc3339(r["replaced_at_ns"]) if r["replaced_at_ns"] else None}
    return head | {k: v for k, v in r.items() if k not in head and not k.endswith("_ns")}


def agreement_json(found: list[NodeAgreement]) -> list[dict[str, Any]]:
    out = []
    for a in found:
        t = a.tally
        lo, hi = a.window or (0, 0)
        out.append({
            "node": a.node, "sources": list(t.sources),
            "window": {"from": rfc3339(lo), "to": rfc3339(hi)} if a.window else None,
            "connections": t.total, "seen_by_all": t.seen_by_all,
            "missed": {s: t.missed.get(s, 0) for s in t.sources}, "disagreed": t.disagreed,
            "examples": [{"time": rfc3339(c.first_ns), "protocol": c.key[0],
                          "client": endpoint_key(c.key[1], c.key[2]),
                          "vip": endpoint_key(c.key[3], c.key[4]),
                          "seen_by": dict(sorted(c.endpoints.items())),
                          "missed_by": [s for s in t.sources if s not in c.endpoints]}
                         for c in t.examples]})
    return out
