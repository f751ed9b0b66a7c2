"""Which rules version was in force on a node at a time: each decision is stamped with
it when stored, so a report never judges observations against rules that were not in
force when they were made."""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class RulesEpochs:
    """Per node, the sorted times of its rule snapshots and their hashes."""

    def __init__(self, snapshots: Iterable[tuple[str, int, str]] = ()) -> None:
        self._by_node: dict[str, tuple[list[int], list[str]]] = {}
        for node, t, h in snapshots:
            self.add(node, [(t, h)])

    def nodes(self) -> list[str]:
        return list(self._by_node)

    def at(self, node: str, t: int) -> str:
        """The version in force on ``node`` at ``t`` (the first one if earlier)."""
        times, hashes = self._by_node.get(node, ([], []))
        if not times:
            return ""
        return hashes[max(bisect.bisect_right(times, t) - 1, 0)]

    def one_version(self, node: str, lo: int, hi: int) -> bool:
        """Whether [lo, hi] lies within one version (almost every batch)."""
        times, _ = self._by_node.get(node, ([], []))
        i = bisect.bisect_right(times, lo)
        return i >= len(times) or hi < times[i]

    def last(self, node: str) -> int | None:
        times, _ = self._by_node.get(node, ([], []))
        return times[-1] if times else None

    def count(self, node: str) -> int:
        return len(self._by_node.get(node, ([], []))[0])

    def replace(self, node: str, epochs: Iterable[tuple[int, str]]) -> None:
        """The node's versions as another writer left them (PostgreSQL replicas)."""
        self._by_node.pop(node, None)
        self.add(node, epochs)

    def add(self, node: str, epochs: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """Add the versions not known yet; returns those (for ``drop``)."""
        times, hashes = self._by_node.setdefault(node, ([], []))
        added = []
        for t, h in epochs:
            i = j = bisect.bisect_right(times, t)
            while j and times[j - 1] == t and hashes[j - 1] != h:
                j -= 1
            if j and times[j - 1] == t:
                continue  # known already
            times.insert(i, t)
            hashes.insert(i, h)
            added.append((t, h))
        return added

    def drop(self, node: str, epochs: Iterable[tuple[int, str]]) -> None:
        """Undo ``add`` (the batch that brought them was rolled back)."""
        times, hashes = self._by_node.get(node, ([], []))
        for t, h in epochs:
            for i in range(len(times)):
                if times[i] == t and hashes[i] == h:
                    del times[i], hashes[i]
                    break
