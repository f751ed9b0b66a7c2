"""Batching in one place: flush on size, on time, and on close.

Records of all kinds go into the same batch, so a rules snapshot is always delivered
no later than the decisions made after it. Decisions are kept as rows and packed into
the batch's columns when it closes (proto/columns.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import Chunk, DecisionRow, pack_parts


class Batcher:
    def __init__(self, agent_id: str, node: str, emit: Callable[[pb.Batch], None],
                 max_records: int = 2000, max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sample_rate: int = 1,
                 boot_id: str | None = None) -> None:
        """``boot_id``: fixed by callers whose batches must be numbered the same each
        run (``pcap import`` of the same file); an agent gets a new one per start."""
        self.agent_id, self.node = agent_id, node
        self.sample_rate = sample_rate
        self.boot_id = boot_id or uuid.uuid4().hex
        self.seq = 0
        self._emit = emit
        self.max_records, self.max_age, self._clock = max_records, max_age, clock
        self._lock = threading.Lock()
        self._batch = self._new()
        self._rows: list[DecisionRow] = []   # rows since the last chunk
        self._parts: list[list[DecisionRow] | Chunk] = []  # in the order handed over
        self._n = 0
        self._opened = clock()

    def _new(self) -> pb.Batch:
        return pb.Batch(agent_id=self.agent_id, boot_id=self.boot_id, node=self.node,
                        sample_rate=self.sample_rate)

    def add_decision(self, d: DecisionRow) -> None:
        with self._lock:
            self._rows.append(d)
            self._n += 1
            if self._n >= self.max_records:
                self._flush_locked()

    def add_decisions(self, rows: list[DecisionRow]) -> None:
        """Many at once (copied): batches still close at ``max_records``."""
        with self._lock:
            while rows:
                room = self.max_records - self._n
                self._rows.extend(rows[:room])
                self._n += min(room, len(rows))
                rows = rows[room:]
                if self._n >= self.max_records:
                    self._flush_locked()

    def add_columns(self, chunk: Chunk) -> None:
        """Decisions already in columns; batches still close at ``max_records``."""
        with self._lock:
            at, n = 0, len(chunk)
            while at < n:
                room = self.max_records - self._n
                part = chunk if at == 0 and n <= room else chunk.slice(at, min(at + room, n))
                if self._rows:
                    self._parts.append(self._rows)
                    self._rows = []
                self._parts.append(part)
                self._n += len(part)
                at += len(part)
                if self._n >= self.max_records:
                    self._flush_locked()

    def add_rules(self, r: pb.RuleSnapshot) -> None:
        self._add("rules", r)

    def add_counter(self, c: pb.CounterDelta) -> None:
        self._add("counters", c)

    def add_lost(self, lost: pb.LostEvents) -> None:
        self._add("lost", lost)

    def _add(self, field: str, record: Any) -> None:
        with self._lock:
            getattr(self._batch, field).append(record)
            self._n += 1
            if self._n >= self.max_records:
                self._flush_locked()

    def tick(self) -> None:
        """Flush if the open batch is older than ``max_age``."""
        with self._lock:
            if self._n and self._clock() - self._opened >= self.max_age:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            if self._n:
                self._flush_locked()

    def _flush_locked(self) -> None:
        self.seq += 1
        b, self._batch = self._batch, self._new()
        if self._rows or self._parts:
            b.columns.CopyFrom(pack_parts([*self._parts, self._rows]))
            self._rows, self._parts = [], []
        b.seq = self.seq
        self._n = 0
        self._opened = self._clock()
        self._emit(b)
