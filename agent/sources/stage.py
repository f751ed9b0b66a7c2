"""The seam between a source and the rest of the agent.

A source owns its kernel objects, its loop, its seen set and its losses; it hands what
it finds to a ``Sink`` and knows nothing of batches, gRPC or the spool. The pipeline
opens it while the agent still holds every capability, drops the ones it does not
need, then lets it ``run`` until ``stop`` is set (draining what the kernel queued
before returning). A new source is a new module that implements ``Source``.
"""

from __future__ import annotations

import threading
from typing import Protocol

from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import Chunk, DecisionRow


class Sink(Protocol):
    def decisions(self, rows: list[DecisionRow]) -> None:
        """Decision rows, in the order seen (the list may be kept: do not reuse it)."""

    def columns(self, chunk: Chunk) -> None:
        """Decisions already in columns (a bulk decoder's), in the order seen."""

    def counter(self, delta: pb.CounterDelta) -> None:
        """A kernel counter's change, with its running totals."""

    def lost(self, lost: pb.LostEvents) -> None:
        """Events known not to be seen or kept: never silent."""

    def turn(self) -> None:
        """The source's loop came round (health, and batches closed by age)."""


class Source(Protocol):
    name: str               # for logs: netlink, ebpf, pcap
    proto: pb.Source        # what its records say in Decision.source
    stats: dict[str, int]   # events by kind, for the stop line and /metrics

    def open(self) -> None:
        """Set up everything that needs privileges (sockets, programs, pins)."""

    def capabilities(self) -> set[str]:
        """The capabilities the running source still needs (``privileges.CAP`` names)."""

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Feed ``sink`` until ``stop`` is set, then drain and close."""
