"""``natlens query rules``: the declared model a node's rules gave at a moment."""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

from natlens.collector.query.decisions import QueryError
from natlens.collector.report.build import rfc3339


def rules_at(db: sqlite_utils.Database, node: str, at_ns: int) -> dict[str, Any]:
    """The last snapshot the node sent at or before ``at_ns``, with when it took effect."""
    row = db.execute("SELECT time_ns, hash, model FROM rule_snapshots WHERE node = ? AND "
                     "time_ns <= ? ORDER BY time_ns DESC LIMIT 1", [node, at_ns]).fetchone()
    if row is None:
        first = db.execute("SELECT MIN(time_ns) FROM rule_snapshots WHERE node = ?",
                           [node]).fetchone()[0]
        if first is None:
            known = [r[0] for r in db.execute("SELECT DISTINCT node FROM rule_snapshots")]
            raise QueryError(f"no rules stored for node {node!r} (nodes: "
                             f"{', '.join(sorted(known)) or 'none'})")
        raise QueryError(f"node {node!r} sent its first rules at {rfc3339(first)}, after "
                         f"{rfc3339(at_ns)}")
    t, h, model = row
    nxt = db.execute("SELECT MIN(time_ns) FROM rule_snapshots WHERE node = ? AND time_ns > ? "
                     "AND hash != ?", [node, t, h]).fetchone()[0]
    return {"node": node, "at": rfc3339(at_ns), "in_force_from": rfc3339(t),
            "replaced_at": rfc3339(nxt) if nxt else None, **json.loads(model)}
