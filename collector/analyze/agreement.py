"""Several sources on one node: which connections did each of them see? (pure)

Each source reports a connection on its own (the eBPF filter and ctnetlink with the
conntrack entry's time, packets with the capture time), so the same connection is found
in each by its client address and port, VIP and port, within ``window_ns`` of the
first sighting. A source reporting the same key twice means two connections (a client
port reused), never one connection seen twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

WINDOW_NS = 2 * 10**9
MAX_EXAMPLES = 20

Key = tuple[str, str, int, str, int]   # protocol, client, client port, VIP, VIP port


@dataclass(frozen=True)
class Sighting:
    key: Key
    time_ns: int
    source: str
    endpoint: str


@dataclass
class Connection:
    key: Key
    first_ns: int
    last_ns: int = 0
    endpoints: dict[str, str] = field(default_factory=dict)   # source → endpoint


def connections(sightings: Iterable[Sighting], window_ns: int = WINDOW_NS,
                ) -> Iterator[Connection]:
    """Group sightings, ordered by key then time, into connections."""
    cur: Connection | None = None
    for s in sightings:
        if (cur is None or s.key != cur.key or s.source in cur.endpoints
                or s.time_ns - cur.first_ns > window_ns):
            if cur is not None:
                yield cur
            cur = Connection(s.key, s.time_ns)
        cur.endpoints[s.source] = s.endpoint
        cur.last_ns = s.time_ns
    if cur is not None:
        yield cur


@dataclass
class Agreement:
    """The tally for one node; ``add`` only the connections of the shared window."""
    sources: tuple[str, ...]
    total: int = 0
    seen_by_all: int = 0
    missed: dict[str, int] = field(default_factory=dict)
    disagreed: int = 0
    examples: list[Connection] = field(default_factory=list)

    def add(self, c: Connection) -> None:
        self.total += 1
        absent = [s for s in self.sources if s not in c.endpoints]
        split = len(set(c.endpoints.values())) > 1
        for s in absent:
            self.missed[s] = self.missed.get(s, 0) + 1
        if not absent:
            self.seen_by_all += 1
        if split:
            self.disagreed += 1
        if (absent or split) and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(c)


def shared_window(spans: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    """When every source was reporting: from the latest first sighting to the earliest
    last one (None if they never overlapped)."""
    lo = max(a for a, _ in spans.values())
    hi = min(b for _, b in spans.values())
    return (lo, hi) if lo <= hi else None


def in_window(c: Connection, lo: int, hi: int) -> bool:
    """A connection counts if it overlaps the shared window: its last sighting is not
    before it starts (the first connection's sightings straddle ``lo``), and its first
    not after it ends."""
    return c.last_ns >= lo and c.first_ns <= hi
