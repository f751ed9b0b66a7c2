"""Rollups and pruning: the store keeps per-connection rows for a while and per-minute
and per-hour sums much longer, so it does not grow without bound.

Rollups are recomputed, not accumulated: each pass rebuilds the minute buckets from
``LATE_NS`` before the last pass up to the last whole minute, from the rows themselves,
so a batch that arrives a few minutes late (an agent that was cut off) still lands in
its bucket, and running a pass twice changes nothing. Rows are pruned only once no
later pass will recompute their buckets. How is the backend's (``Store.rollup``,
``Store.prune``); when, and how long things are kept, is here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from natlens.collector.store.api import Store, StoreUnavailable
from natlens.collector.store.plan import DAY

log = logging.getLogger("natlens.collector.retention")

@dataclass(frozen=True)
class Policy:
    decisions_ns: int = 7 * DAY
    rollups_ns: int = 90 * DAY
    chunk: int = 20_000          # rows deleted per transaction


def rollup(store: Store, now_ns: int) -> tuple[int, int]:
    """Rebuild the minute and hour buckets that may have changed; returns the range."""
    return store.rollup(now_ns)


def prune(store: Store, now_ns: int, policy: Policy) -> dict[str, int]:
    """Delete what is past its retention and already rolled up; returns rows removed."""
    return store.prune(now_ns, policy.decisions_ns, policy.rollups_ns, policy.chunk)


class Maintenance:
    """Rollup then prune every ``interval`` seconds on a daemon thread."""

    def __init__(self, store: Store, policy: Policy, interval: float = 60.0,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store, self.policy, self.interval, self.clock = store, policy, interval, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self.passes = 0
        self.last_error: str | None = None

    def run_once(self) -> dict[str, int]:
        now = self.clock()
        rollup(self.store, now)
        removed = prune(self.store, now, self.policy)
        self.passes += 1
        if any(removed.values()):
            log.info("retention: removed %s", ", ".join(f"{n} {t}" for t, n in removed.items()
                                                        if n))
        return removed

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
                self.last_error = None
            except StoreUnavailable as e:  # the database is away: readiness says so
                log.error("retention pass skipped: %s", e)
            except Exception as e:  # keep serving; the next pass retries
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("retention pass failed: %s", self.last_error)
