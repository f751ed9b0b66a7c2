"""The store interface: everything the collector keeps, and every question asked of it.

Ingest, the Kubernetes watch, retention, the report, the queries, the dashboard and
the metrics call these methods and nothing else; none of them holds an SQL string. A
backend is one module that implements ``Store`` (``sqlite.py`` today, over the
portable queries of ``sql.py``); ``open.py`` picks it by the ``--db`` value.

Reads return plain tuples and numbers: times in ns, endpoints as ``IP:PORT`` keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb


class BatchRejected(NatlensError, ValueError):
    """A batch that cannot be stored as sent; nothing of it was written."""


class StoreUnavailable(NatlensError, OSError):
    """The store cannot take writes now (disk full, I/O error, database down): retry."""


@dataclass(frozen=True)
class PodRecord:
    ip: str
    namespace: str
    name: str
    node: str
    from_ns: int = 0
    to_ns: int | None = None


@dataclass(frozen=True)
class Window:
    """Which decisions a read covers: one node or all, inclusive times (None: open)."""

    node: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None


class PortKey(NamedTuple):
    """One service port on one node under one rules version: what a report judges."""

    node: str
    rules_hash: str
    protocol: str
    vip: str
    port: int


class Count(NamedTuple):
    """A sum for one endpoint of a service port, as one source counted it."""

    key: PortKey
    endpoint: str
    source: str
    n: int
    first_ns: int
    last_ns: int


class Sampled(NamedTuple):
    """Sampled decision records of one endpoint: ``kept`` of about ``kept × rate``."""

    key: PortKey
    endpoint: str
    kept: int
    rate: int


class Lost(NamedTuple):
    node: str
    source: str
    reason: str
    events: int
    recovered: int


class Snapshot(NamedTuple):
    node: str
    time_ns: int
    hash: str
    model: dict[str, Any]


class Interval(NamedTuple):
    """Who held an address when (pods by IP, services by ClusterIP)."""

    ip: str
    namespace: str
    name: str
    from_ns: int
    to_ns: int | None


class DecisionRecord(NamedTuple):
    time_ns: int
    node: str
    protocol: str
    client_ip: str
    client_port: int
    vip: str
    vip_port: int
    endpoint: str
    rules_hash: str
    source: str
    event: str
    ct_id: int
    orig_packets: int = 0   # a DESTROY's counters and duration; 0 on a decision
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0
    duration_ns: int = 0


@dataclass(frozen=True)
class DecisionFilter:
    window: Window = Window()
    client: str | None = None
    ports: frozenset[tuple[str, int, str]] | None = None  # (VIP, port, protocol)s
    endpoint: str | None = None        # an exact IP:PORT key
    endpoint_ip: str | None = None     # or any port of this address
    source: str | None = None
    events: tuple[str, ...] | None = None
    limit: int = 10_000


class Sighting(NamedTuple):
    """One source's record of a connection (``report --agreement``)."""

    protocol: str
    client_ip: str
    client_port: int
    vip: str
    vip_port: int
    time_ns: int
    source: str
    endpoint: str


class Store(Protocol):
    # ---- writing (the collector)
    def ingest(self, batch: pb.Batch) -> bool:
        """Store a batch atomically; False if it was stored already (a resend).
        BatchRejected: nothing stored; StoreUnavailable: nothing stored, retry."""

    def record_pods(self, pods: Iterable[PodRecord]) -> None: ...

    def pod_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                      now: int) -> None:
        """(ip, holder with namespace, name, node) pairs that start or stop at ``now``."""

    def service_intervals(self, opened: list[tuple[str, Any]],
                          closed: list[tuple[str, Any]], now: int) -> None: ...

    def add_k8s_epoch(self, namespace: str, name: str, endpoints: str, now: int) -> None:
        """A Service's endpoints changed: every node's rules get a new version now."""

    def rollup(self, now_ns: int) -> tuple[int, int]:
        """Rebuild the rollups that may have changed; the [start, end) rebuilt."""

    def prune(self, now_ns: int, decisions_ns: int, rollups_ns: int,
              chunk: int) -> dict[str, int]:
        """Remove what is past retention and rolled up; rows removed per table."""

    def close(self) -> None: ...

    # ---- reading (report, queries, dashboard)
    def rule_models(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(node, rules hash) → the declared model."""

    def rules_in_force(self, node: str, at_ns: int) -> Snapshot | None: ...

    def rules_after(self, node: str, time_ns: int, rules_hash: str) -> int | None:
        """When the node's rules next changed from ``rules_hash`` after ``time_ns``."""

    def rule_times(self, node: str) -> tuple[int | None, int | None]:
        """The node's first and last snapshot times."""

    def nodes(self) -> list[str]:
        """Every node that sent rules."""

    def connection_counts(self, w: Window) -> list[Count]:
        """Counted connections per endpoint and source: decisions (not the eBPF
        source's NEW records, which its kernel counters count), kernel counters, and
        rollups for minutes already rolled up."""

    def byte_counts(self, w: Window) -> list[Count]:
        """Bytes both ways of closed connections, per endpoint and source."""

    def sampled(self, w: Window) -> list[Sampled]: ...

    def first_connections(self, w: Window, key: PortKey, source: str) -> dict[str, int]:
        """Endpoint → clients whose first connection in the window went there."""

    def minute_counts(self, w: Window, key: PortKey,
                      sources: tuple[str, ...]) -> list[tuple[int, str, int]]:
        """(minute, endpoint, connections) for one service port."""

    def lost(self) -> list[Lost]: ...

    def data_span(self) -> tuple[int | None, int | None]: ...

    def pods(self) -> list[Interval]: ...

    def services(self) -> list[Interval]: ...

    def decisions(self, f: DecisionFilter) -> list[DecisionRecord]:
        """Oldest first, at most ``f.limit + 1`` (so a caller can tell it was cut)."""

    def source_spans(self, w: Window) -> dict[str, dict[str, tuple[int, int]]]:
        """node → source → (first, last) per-connection record time, unsampled."""

    def sightings(self, w: Window, node: str, lo: int, hi: int) -> Iterable[Sighting]:
        """Per-connection records of one node in [lo, hi], ordered by connection key
        and time."""

    def agents(self) -> set[str]:
        """Every agent id that delivered a batch."""

    def agent_activity(self) -> list[tuple[str, str, int, int]]:
        """(agent id, node, when its last batch was received (ns), batches) per agent."""

    def stats(self) -> dict[str, Any]:
        """Rows, oldest and newest per table, size (``natlens db stats``)."""

    def size_bytes(self) -> int: ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached now (readiness)."""
