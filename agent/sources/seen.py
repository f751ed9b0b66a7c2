"""Which conntrack entries a source has already reported, to tell a decision made while
no agent ran (recovered, counted) from one already known when the table is dumped."""

from __future__ import annotations


def seen_before(seen_at_ns: int | None, start_ns: int) -> bool:
    """Whether a dumped entry is the connection recorded ``seen_at_ns`` (wall-clock ns;
    0: met in a dump before timestamps were on; None: never seen).

    A conntrack id alone does not name one connection: when a client reuses a source
    port, a SYN on the old TIME_WAIT entry kills it and the kernel creates a new entry,
    often in the same slab slot with the same tuple, hence the same id. An entry whose
    kernel start time is later than when its id was seen is that new connection.
    Without conntrack timestamps start times are 0 and a recycled id cannot be told.
    """
    return seen_at_ns is not None and not (start_ns and start_ns > seen_at_ns)


class SeenIds:
    """Recently seen connections (bounded), for the netlink source.

    Each id keeps a time: when its NEW event was read, or the entry's own start time if
    it was first met in a table dump (see ``seen_before`` for why an id is not enough).
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self._ids: dict[tuple[int, int], int] = {}  # insertion order: oldest first

    def add(self, zone: int, ct_id: int, at_ns: int) -> None:
        ids, key = self._ids, (zone, ct_id)
        if key in ids:
            del ids[key]  # seen again: to the end
        ids[key] = at_ns
        if len(ids) > self.limit:
            del ids[next(iter(ids))]

    def forget(self, zone: int, ct_id: int, stop_ns: int) -> None:
        """The entry was destroyed: it can no longer be in a table dump. Kept when the
        id was seen after ``stop_ns``: the kernel gave it to a new entry already (port
        reuse), whose NEW event was read before this DESTROY. Keeps the set the size of
        the live table, not of the traffic so far."""
        seen = self._ids.get((zone, ct_id))
        if seen is not None and (not stop_ns or seen <= stop_ns):
            del self._ids[(zone, ct_id)]

    def __len__(self) -> int:
        return len(self._ids)

    def known(self, zone: int, ct_id: int, start_ns: int) -> bool:
        """Whether a dumped entry (kernel start time ``start_ns``, 0 if none) was seen."""
        return seen_before(self._ids.get((zone, ct_id)), start_ns)
