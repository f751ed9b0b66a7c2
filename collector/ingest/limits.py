"""Per-agent limits, so one misbehaving agent cannot exhaust the collector: records per
batch, and records per second (a token bucket per agent id; an agent over its rate is
slowed down by a delayed acknowledgement, not refused, so nothing it sent is lost)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_batch_records: int = 100_000
    records_per_second: float = 1_000_000.0
    burst_seconds: float = 2.0
    max_wait: float = 10.0       # longer than this and the batch is refused instead


class OverLimit(ValueError):
    """A batch no wait can admit; the message says which limit."""


def batch_records(n_decisions: int, n_counters: int, n_rules: int, n_lost: int) -> int:
    return n_decisions + n_counters + n_rules + n_lost


class RateLimiter:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # agent → (tokens, at)
        self._lock = threading.Lock()
        self.throttled = 0

    def wait_for(self, agent: str, records: int) -> float:
        """Seconds this agent must wait before ``records`` more are admitted (taking them
        now); raises OverLimit when the batch alone is over a limit."""
        lim = self.limits
        if records > lim.max_batch_records:
            raise OverLimit(f"batch of {records} records is over the collector's "
                            f"--max-batch-records {lim.max_batch_records}")
        cap = lim.records_per_second * lim.burst_seconds
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(agent, (cap, now))
            tokens = min(cap, tokens + (now - at) * lim.records_per_second) - records
            self._buckets[agent] = (tokens, now)
        wait = max(0.0, -tokens / lim.records_per_second)
        if wait > lim.max_wait:
            raise OverLimit(f"agent {agent} is over the collector's --max-agent-rate "
                            f"({lim.records_per_second:g} records/s)")
        if wait:
            self.throttled += 1
        return wait
