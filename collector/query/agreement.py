"""``natlens report --agreement``: per node watched by several sources, the connections
each source saw and the ones it missed (analysis in collector/analyze/agreement.py).

Only per-connection records take part: NEW (and recovered) decisions, unsampled. A
source shipping only counters (eBPF without ``--decisions``) cannot be compared per
connection and is left out, which the section says by not listing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import sqlite_utils

from natlens.collector.analyze.agreement import (
    WINDOW_NS,
    Agreement,
    Sighting,
    connections,
    in_window,
    shared_window,
)
from natlens.collector.report.build import ReportQuery, node_time_clauses

_PER_CONNECTION = "event IN ('new', 'recovered') AND sample_rate = 1"


def agreement(db: sqlite_utils.Database, q: ReportQuery, when: Callable[[int], str],
              window_ns: int = WINDOW_NS) -> list[dict[str, Any]]:
    clauses, args = node_time_clauses(q.node, q.since_ns, q.until_ns)
    where = " AND ".join([_PER_CONNECTION, *clauses])
    spans: dict[str, dict[str, tuple[int, int]]] = {}
    for node, source, lo, hi in db.execute(
            f"SELECT node, source, MIN(time_ns), MAX(time_ns) FROM decisions WHERE {where} "
            "GROUP BY node, source", args):
        spans.setdefault(node, {})[source] = (lo, hi)
    out = []
    for node, by_source in sorted(spans.items()):
        if len(by_source) < 2:
            continue
        tally = Agreement(tuple(sorted(by_source)))
        shared = shared_window(by_source)
        if shared is None:  # one stopped before another started: nothing to compare
            out.append(tally.to_json(node, 0, 0, when) | {"window": None})
            continue
        lo, hi = shared
        for c in connections(_sightings(db, where, [*args, node], lo - window_ns,
                                        hi + window_ns), window_ns):
            if in_window(c, lo, hi):
                tally.add(c)
        out.append(tally.to_json(node, lo, hi, when))
    return out


def _sightings(db: sqlite_utils.Database, where: str, args: list[Any], lo: int,
               hi: int) -> Iterator[Sighting]:
    for proto, client, cport, vip, vport, t, source, ep in db.execute(
            f"SELECT protocol, client_ip, client_port, vip, vip_port, time_ns, source, "
            f"endpoint FROM decisions WHERE {where} AND node = ? AND time_ns >= ? AND "
            f"time_ns <= ? ORDER BY protocol, client_ip, client_port, vip, vip_port, time_ns",
            [*args, lo, hi]):
        yield Sighting((proto, client, cport, vip, vport), t, source, ep)
