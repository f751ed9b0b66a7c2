"""An endpoint's share over time, in bins of at least ``MIN_BIN`` connections: a minute of
three connections is noise, not a share. A bin also ends before ``GAP_S`` without
connections, where a line drawn through the bins breaks (the plot, the dashboard)."""

from __future__ import annotations

from typing import NamedTuple

MIN_BIN = 100       # connections per time bin
GAP_S = 5 * 60.0    # no connection for this long: the line breaks


class Bin(NamedTuple):
    start_s: float                 # first minute's start, epoch seconds
    end_s: float                   # last minute's end
    counts: dict[str, int]         # endpoint → connections
    after_gap: bool                # the line breaks before this bin


def bins(minutes: list[tuple[float, dict[str, int]]], min_count: int = MIN_BIN,
         gap_s: float = GAP_S) -> list[Bin]:
    """Consecutive minutes (epoch seconds, endpoint → connections), oldest first, summed
    into bins of at least ``min_count`` connections; a bin also ends before a gap of
    ``gap_s`` without connections, and the last one may be short."""
    out: list[Bin] = []
    acc: dict[str, int] = {}
    start = prev = None
    gap = False
    for m, counts in minutes:
        if prev is not None and m - prev > gap_s:
            if acc:
                out.append(Bin(start or 0.0, prev + 60, acc, gap))
            acc, start, gap = {}, None, True
        if start is None:
            start = m
        for ep, n in counts.items():
            acc[ep] = acc.get(ep, 0) + n
        prev = m
        if sum(acc.values()) >= min_count:
            out.append(Bin(start, m + 60, acc, gap))
            acc, start, gap = {}, None, False
    if acc and prev is not None:
        out.append(Bin(start or prev, prev + 60, acc, gap))
    return out
