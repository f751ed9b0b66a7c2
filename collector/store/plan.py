"""Where a report window's counts come from: whole minutes already rolled up are read
from the per-minute rollups (thousands of rows instead of millions), the rest from the
rows themselves. Pure, so the split is tested on its own: together the parts cover the
window exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE = 60 * 10**9
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def floor_to(t: int, step: int) -> int:
    return t - t % step

Segments = tuple[tuple[int | None, int | None], ...]  # half-open [lo, hi), None: open


@dataclass(frozen=True)
class Plan:
    raw: Segments
    rollup: tuple[int | None, int] | None  # rolled-up buckets starting in [lo, hi)

    def by_granularity(self) -> tuple[Segments, Segments]:
        """The rollup range as (minute, hour) bucket ranges: whole hours from the hour
        rollups (24 rows a day per key instead of 1,440), the edges from minutes."""
        if self.rollup is None:
            return (), ()
        lo, hi = self.rollup
        h_lo = None if lo is None else -(-lo // HOUR) * HOUR
        h_hi = hi - hi % HOUR
        if h_lo is not None and h_lo >= h_hi:
            return ((lo, hi),), ()
        minutes: list[tuple[int | None, int | None]] = []
        if lo is not None and h_lo is not None and lo < h_lo:
            minutes.append((lo, h_lo))
        if h_hi < hi:
            minutes.append((h_hi, hi))
        return tuple(minutes), ((h_lo, h_hi),)


def plan(since: int | None, until: int | None, rolled_upto: int | None,
         pruned_before: int = 0) -> Plan:
    """``since``/``until`` inclusive ns (None: open); rollups are complete before
    ``rolled_upto``; rows before ``pruned_before`` are gone (their minutes come whole
    from the rollups, the one finer approximation)."""
    end = None if until is None else until + 1
    if not rolled_upto:
        return Plan(((since, end),), None)
    lo = None if since is None else -(-since // MINUTE) * MINUTE       # first whole minute
    hi = rolled_upto if end is None else min(rolled_upto, end - end % MINUTE)
    if since is not None and since < pruned_before:
        lo = since - since % MINUTE  # the partial minute's rows are pruned: take it whole
    if lo is not None and lo >= hi:
        return Plan(((since, end),), None)
    raw: list[tuple[int | None, int | None]] = []
    if since is not None and lo is not None and since < lo:
        raw.append((since, lo))
    if end is None or hi < end:
        raw.append((hi, end))
    return Plan(tuple(raw), (lo, hi))


def clause(column: str, segments: Segments) -> tuple[str, list[int]]:
    """SQL for ``column`` in any of the half-open segments."""
    parts: list[str] = []
    args: list[int] = []
    for lo, hi in segments:
        conds = []
        if lo is not None:
            conds.append(f"{column} >= ?")
            args.append(lo)
        if hi is not None:
            conds.append(f"{column} < ?")
            args.append(hi)
        parts.append("(" + (" AND ".join(conds) or "1 = 1") + ")")
    return "(" + (" OR ".join(parts) or "1 = 0") + ")", args
