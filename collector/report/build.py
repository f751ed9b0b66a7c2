"""Build the report (the JSON contract in DESIGN.md) from the store.

Decisions are grouped by node, rules version and service port, so every observation is
judged against the rules that were in force on its node when it was made. ClientIP
affinity ports are judged on each client's first connection only: later connections
follow the affinity, not the random choice.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlite_utils
from scipy import stats

from natlens.collector.analyze.judge import judge, verdict
from natlens.collector.analyze.multiple import holm
from natlens.collector.report.plan import Plan, clause, plan
from natlens.collector.report.sources import OLDER, combine, pick
from natlens.collector.store.db import COUNTED_EVENTS
from natlens.collector.store.retention import pruned_before

DEFAULT_ALPHA = 0.001


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(frozen=True)
class ReportQuery:
    service: str | None = None      # NS/NAME or NS/NAME:PORT
    node: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    alpha: float = DEFAULT_ALPHA
    weight: str = "connections"     # or "bytes": shares and distance by bytes too


def _matches(service: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return service == wanted or (":" not in wanted and service.split(":", 1)[0] == wanted)


def node_time_clauses(node: str | None, since_ns: int | None,
                      until_ns: int | None) -> tuple[list[str], list[Any]]:
    """SQL conditions on a decision's node and time (inclusive window)."""
    clauses: list[str] = []
    args: list[Any] = []
    for cond, value in (("node = ?", node), ("time_ns >= ?", since_ns),
                        ("time_ns <= ?", until_ns)):
        if value is not None and value != "":
            clauses.append(cond)
            args.append(value)
    return clauses, args


def _where(q: ReportQuery) -> tuple[str, list[Any]]:
    clauses, args = node_time_clauses(q.node, q.since_ns, q.until_ns)
    clauses.insert(0, f"event IN ({','.join('?' * len(COUNTED_EVENTS))})")
    return " AND ".join(clauses), [*COUNTED_EVENTS, *args]


def _pod_names(db: sqlite_utils.Database, at_ns: int) -> dict[str, str]:
    """Endpoint IP → ``ns/name`` of the pod that had that IP at ``at_ns``."""
    out: dict[str, str] = {}
    for ip, ns, name in db.execute(
            "SELECT ip, namespace, name FROM pods WHERE from_ns <= ? "
            "AND (to_ns IS NULL OR to_ns >= ?) ORDER BY from_ns", [at_ns, at_ns]):
        out[ip] = f"{ns}/{name}"
    return out


def _find_port(model: dict[str, Any], vip: str, port: int, proto: str) -> dict[str, Any] | None:
    fallback = None
    for s in model["services"]:
        if s["port"] != port or s["protocol"] != proto:
            continue
        if s["vip"] == vip:
            return dict(s)
        if s["kind"] == "nodePort" and s["vip"] in ("0.0.0.0", "::"):
            fallback = s
    return dict(fallback) if fallback else None


def build_report(db: sqlite_utils.Database, q: ReportQuery) -> dict[str, Any]:
    now = time.time_ns()
    where, args = _where(q)
    models: dict[tuple[str, str], dict[str, Any]] = {}
    for node, h, model in db.execute("SELECT node, hash, model FROM rule_snapshots"):
        models[(node, h)] = json.loads(model)
    # per service port, source and endpoint (several sources may watch one node)
    by_src: dict[tuple[str, str, str, str, int], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int)))
    tmin, tmax = None, None
    # The eBPF source counts NEW decisions in the kernel (the counters table); its
    # decision records are for queries and, when sampled, are shown scaled, not counted.
    p = _plan(db, q)
    raw_sql, raw_args = clause("time_ns", p.raw)
    cwhere, cargs = _where(ReportQuery(node=q.node))
    for node, h, proto, vip, port, ep, src, n, t0, t1 in [*db.execute(
            f"SELECT node, rules_hash, protocol, vip, vip_port, endpoint, source, "
            f"SUM(sample_rate), MIN(time_ns), MAX(time_ns) FROM decisions WHERE {cwhere} "
            f"AND {raw_sql} AND NOT (source = 'ebpf' AND event = 'new') "
            f"GROUP BY node, rules_hash, protocol, vip, vip_port, endpoint, source",
            [*cargs, *raw_args]),
            *_counter_sums(db, q, p), *_rollup_sums(db, q, p, "connections")]:
        by_src[(node, h, proto, vip, port)][src][ep] += int(n)
        tmin = t0 if tmin is None else min(tmin, t0)
        tmax = t1 if tmax is None else max(tmax, t1)
    counts: dict[tuple[str, str, str, str, int], dict[str, int]] = {}
    counted: dict[tuple[str, str, str, str, int], str] = {}
    for key, per_source in by_src.items():
        counted[key], counts[key] = pick(per_source)
    sampled = _sampled(db, where, args)
    volume = _bytes(db, q, p)
    # An open-ended window (--since) ends now; otherwise at the last decision seen.
    window_to = q.until_ns or (now if q.since_ns is not None else (tmax or now))
    pods = _pod_names(db, tmax or window_to)
    entries: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    judgements = []
    for (node, h, proto, vip, port), by_ep in sorted(counts.items()):
        observed = dict(by_ep)
        sp = _find_port(models.get((node, h), {"services": []}), vip, port, proto)
        if sp is None:
            unmatched.append({"node": node, "rules_version": h, "vip": vip, "port": port,
                              "protocol": proto, "observed": dict(sorted(observed.items()))})
            continue
        if not _matches(sp["service"], q.service):
            continue
        if sp["affinity"] == "ClientIP":
            observed = _first_connections(db, where, args, node, h, proto, vip, port,
                                          counted[(node, h, proto, vip, port)])
        scheduler = sp.get("scheduler", "random")
        j = judge([(e["endpoint"], e["probability"]) for e in sp["endpoints"]], observed,
                  scheduler)
        chains = {e["endpoint"]: e["chain"] for e in sp["endpoints"]}
        for e in j.endpoints:
            e["pod"] = pods.get(e["endpoint"].rsplit(":", 1)[0].strip("[]"))
            e["chain"] = chains.get(e["endpoint"])
        for u in j.undeclared:
            u["pod"] = pods.get(u["endpoint"].rsplit(":", 1)[0].strip("[]"))
        entry: dict[str, Any] = {
            "service": sp["service"], "kind": sp["kind"], "vip": vip, "port": port,
            "protocol": proto, "node": node, "rules_version": h, "affinity": sp["affinity"],
            "policy": sp["policy"], "chain": sp.get("chain", ""), "scheduler": scheduler,
            "total": j.total, "source": counted[(node, h, proto, vip, port)],
            "endpoints": j.endpoints, "undeclared": j.undeclared, "test": None, "verdict": "",
            "reasons": j.reasons}
        if sp["affinity"] == "ClientIP":
            entry["counted"] = "first connection per client"
        others = by_src[(node, h, proto, vip, port)]
        if len([src for src in others if src != OLDER]) > 1:
            entry["sources"] = {src: sum(c.values()) for src, c in sorted(others.items())
                                if src != OLDER}
        if (node, h, proto, vip, port) in sampled:
            entry["sampled"] = sampled[(node, h, proto, vip, port)]
        entry["tvd"] = tvd(j.endpoints, j.undeclared, j.total)
        _add_bytes(entry, combine(volume.get((node, h, proto, vip, port), {}),
                                  counted[(node, h, proto, vip, port)]), q.weight)
        entries.append(entry)
        judgements.append(j)
    tested = [i for i, j in enumerate(judgements) if j.test is not None]
    adjusted = holm([t.p_value for i in tested if (t := judgements[i].test) is not None])
    adj_by = dict(zip(tested, adjusted, strict=True))
    for i, (entry, j) in enumerate(zip(entries, judgements, strict=True)):
        if j.test is not None:
            entry["test"] = {"method": j.test.method, "statistic": round(j.test.statistic, 6),
                             "dof": j.test.dof, "p_value": j.test.p_value,
                             "p_value_holm": adj_by[i]}
        elif j.rotation is not None:
            entry["test"] = {"method": "rotation", "statistic": round(j.rotation.statistic, 6),
                             "dof": None, "p_value": None, "p_value_holm": None,
                             "bounds": list(j.rotation.bounds)}
        entry["verdict"] = verdict(j, adj_by.get(i), q.alpha)
    lost = [{"node": n, "source": s, "reason": r, "count": c, "recovered": rc}
            for n, s, r, c, rc in db.execute(
                "SELECT node, source, reason, SUM(count), SUM(recovered) FROM lost_events "
                "GROUP BY node, source, reason ORDER BY node")]
    return {
        "generated_at": rfc3339(now),
        "window": {"from": rfc3339(q.since_ns or tmin or now), "to": rfc3339(window_to)},
        "alpha": q.alpha,
        "services": entries,
        "comparisons": compare_nodes(entries, q.alpha),
        "unmatched": unmatched,
        "lost": lost,
    }


def tvd(endpoints: list[dict[str, Any]], undeclared: list[dict[str, Any]],
        total: int) -> float | None:
    """Total variation distance between observed and declared shares: the fraction of
    connections that would have to go elsewhere to match the rules exactly."""
    if not total:
        return None
    d = sum(abs(e["observed"] / total - e["declared"]) for e in endpoints)
    d += sum(u["observed"] / total for u in undeclared)
    return round(float(d) / 2, 6)


def _add_bytes(entry: dict[str, Any], by_ep: dict[str, int], weight: str) -> None:
    total = sum(by_ep.values())
    entry["bytes"] = total
    for e in entry["endpoints"]:
        e["bytes"] = by_ep.get(e["endpoint"], 0)
        e["byte_share"] = round(e["bytes"] / total, 6) if total else 0.0
    if weight == "bytes":
        entry["tvd_bytes"] = (round(sum(abs(e["byte_share"] - e["declared"])
                                        for e in entry["endpoints"]) / 2, 6)
                              if total else None)


def _bytes(db: sqlite_utils.Database, q: ReportQuery,
           p: Plan) -> dict[tuple[Any, ...], dict[str, dict[str, int]]]:
    """Bytes both ways per endpoint and source: closed connections of user-space sources
    (their DESTROY events), the eBPF source's kernel counters, and the rollups of both."""
    out: dict[tuple[Any, ...], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int)))
    node_sql, node_args = ("node = ?", [q.node]) if q.node else ("1", [])
    d_sql, d_args = clause("time_ns", p.raw)
    c_sql, c_args = clause("window_end_ns", p.raw)
    group = "node, rules_hash, protocol, vip, vip_port, endpoint"
    for node, h, proto, vip, port, ep, src, n in [
            *db.execute(f"SELECT {group}, source, SUM((orig_bytes + reply_bytes) * "
                        f"sample_rate) FROM decisions WHERE event = 'destroy' AND "
                        f"source != 'ebpf' AND {node_sql} AND {d_sql} GROUP BY {group}, "
                        "source", [*node_args, *d_args]),
            *db.execute(f"SELECT {group}, source, SUM(orig_bytes + reply_bytes) FROM "
                        f"counters WHERE {node_sql} AND {c_sql} GROUP BY {group}, source",
                        [*node_args, *c_args]),
            *(row[:8] for row in _rollup_sums(db, q, p, "orig_bytes + reply_bytes"))]:
        out[(node, h, proto, vip, port)][src][ep] += int(n or 0)
    return out


def compare_nodes(entries: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """The same service port seen from several nodes: is the split the same on each?
    (chi-square test of homogeneity over nodes × endpoints)."""
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
        nodes = sorted(by_node)
        eps = sorted({ep for n in nodes for ep, k in by_node[n].items() if k})
        table = np.array([[by_node[n].get(ep, 0) for ep in eps] for n in nodes])
        cmp: dict[str, Any] = {"service": service, "vip": vip, "port": port,
                               "protocol": proto, "nodes": {
                                   n: dict(sorted(by_node[n].items())) for n in nodes}}
        if len(eps) < 2 or (table.sum(axis=1) == 0).any():
            cmp |= {"test": None, "verdict": "insufficient-data"}
        else:
            res = stats.chi2_contingency(table, correction=False)
            small = float(res.expected_freq.min()) < 5
            cmp |= {"test": {"method": "chi-square homogeneity",
                             "statistic": round(float(res.statistic), 6), "dof": int(res.dof),
                             "p_value": float(res.pvalue)},
                    "verdict": ("insufficient-data" if small else
                                "different" if res.pvalue < alpha else "same")}
        out.append(cmp)
    return out


def _plan(db: sqlite_utils.Database, q: ReportQuery) -> Plan:
    row = db.execute("SELECT value_ns FROM retention WHERE name = 'rolled_upto_ns'"
                     ).fetchone()
    return plan(q.since_ns, q.until_ns, int(row[0]) if row else None, pruned_before(db))


def _rollup_sums(db: sqlite_utils.Database, q: ReportQuery, p: Plan,
                 what: str) -> list[tuple[Any, ...]]:
    """Rollups for the whole minutes of the window already rolled up: whole hours from
    the hour rollups, the rest from the minute ones."""
    out: list[tuple[Any, ...]] = []
    node_sql, node_args = ("node = ?", [q.node]) if q.node else ("1", [])
    for granularity, segments in zip(("minute", "hour"), p.by_granularity(), strict=True):
        if not segments:
            continue
        sql, args = clause("bucket_ns", segments)
        out += db.execute(
            f"SELECT node, rules_hash, protocol, vip, vip_port, endpoint, source, "
            f"SUM({what}), MIN(bucket_ns), MAX(bucket_ns) FROM rollups WHERE granularity = ? "
            f"AND {sql} AND {node_sql} AND ({what}) > 0 "
            "GROUP BY node, rules_hash, protocol, vip, vip_port, endpoint, source",
            [granularity, *args, *node_args]).fetchall()
    return out


def _counter_sums(db: sqlite_utils.Database, q: ReportQuery, p: Plan) -> list[tuple[Any, ...]]:
    """Kernel counters in the raw part of the window (by the end of each window)."""
    sql, seg_args = clause("window_end_ns", p.raw)
    clauses = ["connections > 0", sql]
    args: list[Any] = list(seg_args)
    if q.node:
        clauses.append("node = ?")
        args.append(q.node)
    return list(db.execute(
        "SELECT node, rules_hash, protocol, vip, vip_port, endpoint, source, "
        "SUM(connections), MIN(window_start_ns), MAX(window_end_ns) FROM counters WHERE "
        f"{' AND '.join(clauses)} GROUP BY node, rules_hash, protocol, vip, vip_port, "
        "endpoint, source",
        args))


SAMPLED_Z = 4.0  # standard errors in a sampled count's stated error


def scaled_error(k: int, rate: int) -> float:
    """Four standard errors of k·rate as an estimate of n, when each of n connections
    is kept with probability 1/rate: Var(k·rate) = n(rate−1), estimated from the
    sample as (k + 16)·rate·(rate−1).

    Four, not three: the report says the true count lies within this, and at three an
    unbiased sampler lands outside for about 1 endpoint in 370 (the test suite met
    one, at 3.26); at four, about 1 in 16,000. The 16 (four squared) added to k keeps
    the estimate from understating the spread when few decisions were kept: with k
    itself, n = 2,000 sampled 1 in 100 fell outside 208 times in 100,000 (the
    simulation of tests/unit/test_stats.py, run by hand with k), with k + 16 never
    (that test)."""
    return SAMPLED_Z * math.sqrt((k + SAMPLED_Z ** 2) * rate * (rate - 1))


def _sampled(db: sqlite_utils.Database, where: str,
             args: list[Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per service port, the eBPF source's sampled decisions and their scaled counts."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for node, h, proto, vip, port, ep, k, rate in db.execute(
            f"SELECT node, rules_hash, protocol, vip, vip_port, endpoint, COUNT(*), "
            f"MAX(sample_rate) FROM decisions WHERE {where} AND source = 'ebpf' AND "
            f"event = 'new' AND sample_rate > 1 "
            f"GROUP BY node, rules_hash, protocol, vip, vip_port, endpoint", args):
        e = out.setdefault((node, h, proto, vip, port), {"rate": rate, "endpoints": []})
        e["rate"] = max(e["rate"], rate)
        e["endpoints"].append({"endpoint": ep, "decisions": k, "scaled": k * rate,
                               "error": round(scaled_error(k, rate), 1)})
    return out


def _first_connections(db: sqlite_utils.Database, where: str, args: list[Any], node: str,
                       h: str, proto: str, vip: str, port: int,
                       source: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    # SQLite returns the bare column (endpoint) from the row holding MIN(time_ns).
    for ep, _ in db.execute(
            f"SELECT endpoint, MIN(time_ns) FROM decisions WHERE {where} AND node=? AND "
            f"rules_hash=? AND protocol=? AND vip=? AND vip_port=? AND "
            f"(source = ? OR ? = '{OLDER}') GROUP BY client_ip",
            [*args, node, h, proto, vip, port, source, source]):
        out[ep] += 1
    return dict(out)


MAX_HOURS = 24 * 31
HOUR_NS = 3600 * 10**9


def _data_span(db: sqlite_utils.Database) -> tuple[int | None, int | None]:
    row = db.execute("SELECT MIN(a), MAX(b) FROM (SELECT MIN(time_ns) AS a, MAX(time_ns) AS b "
                     "FROM decisions UNION ALL SELECT MIN(window_end_ns), MAX(window_end_ns) "
                     "FROM counters UNION ALL SELECT MIN(bucket_ns), MAX(bucket_ns) "
                     "FROM rollups WHERE granularity = 'minute')").fetchone()
    return row[0], row[1]


def build_report_by_hour(db: sqlite_utils.Database, q: ReportQuery) -> dict[str, Any]:
    """One judgement per service port and clock hour; Holm over all of them."""
    lo, hi = _data_span(db)
    start = q.since_ns if q.since_ns is not None else lo
    end = q.until_ns if q.until_ns is not None else (time.time_ns() if q.since_ns else hi)
    if start is None or end is None:
        return build_report(db, q) | {"by": "hour"}
    first = start - start % HOUR_NS
    hours = range(first, end + 1, HOUR_NS)
    if len(hours) > MAX_HOURS:
        raise ValueError(f"--by hour over {len(hours)} hours; narrow the window to at most "
                         f"{MAX_HOURS} (--since/--from/--to)")
    services: list[dict[str, Any]] = []
    for h in hours:
        part = build_report(db, ReportQuery(q.service, q.node, max(h, start),
                                            min(h + HOUR_NS - 1, end), q.alpha, q.weight))
        for e in part["services"]:
            e["hour"] = rfc3339(h)
        services += part["services"]
    # Holm again, over every hour's tests: more hours, more chances of a false alarm.
    tested = [e for e in services if e["test"] and e["test"]["p_value"] is not None]
    for e, p_adj in zip(tested, holm([e["test"]["p_value"] for e in tested]), strict=True):
        e["test"]["p_value_holm"] = p_adj
        if e["verdict"] in ("consistent", "skewed") and not e["reasons"]:
            e["verdict"] = "skewed" if p_adj < q.alpha else "consistent"
    whole = build_report(db, q)
    return whole | {"by": "hour", "services": services}
