"""``natlens query decisions --follow``: decisions as they are stored, like ``conntrack
-E`` or ``hubble observe -f``.

The store is polled. A batch reaches it up to a few seconds after its decisions were
made, so each poll reads from ``overlap`` before the newest decision already shown and
skips those it showed; a decision delivered later than that (an agent that was cut off
and resends its spool) is not shown here, and is found by a window query instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from natlens.collector.query.decisions import DecisionQuery

OVERLAP_NS = 60 * 10**9


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["time_ns"], r["node"], r["client"], r["ct_id"], r["source"], r["event"])


class Follow:
    def __init__(self, q: DecisionQuery, start_ns: int, overlap_ns: int = OVERLAP_NS) -> None:
        self.q, self.overlap = q, overlap_ns
        self.newest = start_ns
        self.start = start_ns
        self.seen: dict[tuple[Any, ...], int] = {}

    def poll(self, fetch: Callable[[DecisionQuery], list[dict[str, Any]]]
             ) -> list[dict[str, Any]]:
        """Decisions not shown yet, oldest first; ``fetch`` answers a query (the store,
        or a collector's HTTP API)."""
        since = max(self.start, self.newest - self.overlap)
        rows = fetch(replace(self.q, since_ns=since, until_ns=None, limit=100_000))
        new = [r for r in rows if row_key(r) not in self.seen]
        for r in new:
            self.seen[row_key(r)] = r["time_ns"]
            self.newest = max(self.newest, r["time_ns"])
        floor = self.newest - self.overlap
        if len(self.seen) > 2 * len(new) + 1024:
            self.seen = {k: t for k, t in self.seen.items() if t >= floor}
        return new
