"""Which source a node's counts come from when several watched it at once.

``natlens agent --source all`` runs the eBPF, netlink and packet sources side by side on
one node: each sees every connection, so adding them up would count each three times.
Per node and service port the report counts one of them, in order of exactness (the
kernel's own counters, then every conntrack event, then packets), and shows the others'
totals beside it. Rollups written before sources were kept apart (source ``""``) cover
an earlier time than any source-keyed row, so they are always added.
"""

from __future__ import annotations

PREFERENCE = ("ebpf", "netlink", "pcap")
OLDER = ""


def rank(source: str) -> int:
    return PREFERENCE.index(source) if source in PREFERENCE else len(PREFERENCE)


def combine(by_source: dict[str, dict[str, int]], chosen: str) -> dict[str, int]:
    """The counted source's per-endpoint counts plus the older unkeyed ones."""
    counts = dict(by_source.get(OLDER, {}))
    if chosen != OLDER:
        for ep, n in by_source.get(chosen, {}).items():
            counts[ep] = counts.get(ep, 0) + n
    return counts


def pick(by_source: dict[str, dict[str, int]]) -> tuple[str, dict[str, int]]:
    """(the counted source, its counts combined as above)."""
    named = sorted((s for s in by_source if s != OLDER), key=lambda s: (rank(s), s))
    chosen = named[0] if named else OLDER
    return chosen, combine(by_source, chosen)
