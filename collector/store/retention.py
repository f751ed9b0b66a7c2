"""Rollups and pruning: the store keeps per-connection rows for a while and per-minute
and per-hour sums much longer, so it does not grow without bound.

Rollups are recomputed, not accumulated: each pass rebuilds the minute buckets from
``LATE_NS`` before the last pass up to the last whole minute, from the rows themselves,
so a batch that arrives a few minutes late (an agent that was cut off) still lands in
its bucket, and running a pass twice changes nothing. Rows are pruned only once no
later pass will recompute their buckets. Every write takes the store's lock for one
bounded chunk at a time, so ingest goes on between chunks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natlens.collector.store.db import COUNTED_EVENTS, Store
from natlens.collector.store.schema import DECISION_PK, ROLLUP_COLUMNS, ROLLUP_KEY

log = logging.getLogger("natlens.collector.retention")

MINUTE = 60 * 10**9
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LATE_NS = 10 * MINUTE


@dataclass(frozen=True)
class Policy:
    decisions_ns: int = 7 * DAY
    rollups_ns: int = 90 * DAY
    chunk: int = 20_000          # rows deleted per transaction


def floor_to(t: int, step: int) -> int:
    return t - t % step


def _state(store: Store, name: str) -> int | None:
    row = store.db.execute("SELECT value_ns FROM retention WHERE name = ?", [name]).fetchone()
    return None if row is None else int(row[0])


def _set_state(store: Store, name: str, value: int) -> None:
    store.db.execute("INSERT INTO retention (name, value_ns) VALUES (?, ?) ON CONFLICT(name) "
                     "DO UPDATE SET value_ns = excluded.value_ns", [name, value])


# One row per decision or counter window: what it adds to its bucket. Connections are
# counted as the report counts them (eBPF NEW decisions are in the kernel counters);
# bytes come from DESTROY events of user-space sources and from the kernel counters.
# Kept apart per source: a node several sources watch is counted from one of them.
_COUNTED = ",".join(f"'{e}'" for e in COUNTED_EVENTS)
_ROWS = f"""
    SELECT time_ns AS t, node, protocol, vip, vip_port, rules_hash, endpoint, source,
      CASE WHEN event IN ({_COUNTED}) AND NOT (source = 'ebpf' AND event = 'new')
           THEN sample_rate ELSE 0 END AS connections,
      CASE WHEN event = 'destroy' AND source != 'ebpf' THEN sample_rate ELSE 0 END AS closed,
      CASE WHEN event = 'destroy' AND source != 'ebpf' THEN orig_bytes ELSE 0 END AS orig_bytes,
      CASE WHEN event = 'destroy' AND source != 'ebpf' THEN reply_bytes ELSE 0 END
        AS reply_bytes,
      CASE WHEN event = 'destroy' AND source != 'ebpf' THEN orig_packets ELSE 0 END
        AS orig_packets,
      CASE WHEN event = 'destroy' AND source != 'ebpf' THEN reply_packets ELSE 0 END
        AS reply_packets
    FROM decisions WHERE time_ns >= :start AND time_ns < :end
    UNION ALL
    SELECT window_end_ns, node, protocol, vip, vip_port, rules_hash, endpoint, source,
      connections,
      closed, orig_bytes, reply_bytes, orig_packets, reply_packets
    FROM counters WHERE window_end_ns >= :start AND window_end_ns < :end"""

_GROUP = "node, protocol, vip, vip_port, rules_hash, endpoint, source"
_SUMS = ", ".join(f"SUM({c})" for c in ROLLUP_COLUMNS)
_INSERT = f"INSERT INTO rollups ({', '.join(ROLLUP_KEY)}, {', '.join(ROLLUP_COLUMNS)}) "


def rollup(store: Store, now_ns: int) -> tuple[int, int]:
    """Rebuild the minute and hour buckets that may have changed; returns the range."""
    end = floor_to(now_ns, MINUTE)
    with store.lock, store.db.atomic():
        last = _state(store, "rolled_upto_ns")
        if last is None:
            first = store.db.execute(
                "SELECT MIN(t) FROM (SELECT MIN(time_ns) AS t FROM decisions "
                "UNION ALL SELECT MIN(window_end_ns) FROM counters)").fetchone()[0]
            start = floor_to(int(first), MINUTE) if first is not None else end
        else:
            start = floor_to(max(last - LATE_NS, 0), MINUTE)
        if start >= end:
            return start, end
        args: dict[str, Any] = {"start": start, "end": end, "m": MINUTE, "h": HOUR}
        store.db.execute("DELETE FROM rollups WHERE granularity = 'minute' AND bucket_ns >= "
                         ":start AND bucket_ns < :end", args)
        store.db.execute(f"{_INSERT} SELECT 'minute', (t / :m) * :m, {_GROUP}, {_SUMS} "
                         f"FROM ({_ROWS}) GROUP BY (t / :m), {_GROUP}", args)
        hours = {"start": floor_to(start, HOUR), "end": end, "h": HOUR}
        store.db.execute("DELETE FROM rollups WHERE granularity = 'hour' AND bucket_ns >= "
                         ":start AND bucket_ns < :end", hours)
        store.db.execute(f"{_INSERT} SELECT 'hour', (bucket_ns / :h) * :h, {_GROUP}, {_SUMS} "
                         "FROM rollups WHERE granularity = 'minute' AND bucket_ns >= :start "
                         f"AND bucket_ns < :end GROUP BY (bucket_ns / :h), {_GROUP}", hours)
        _set_state(store, "rolled_upto_ns", end)
    return start, end


def _delete_chunks(store: Store, table: str, column: str, before: int, chunk: int) -> int:
    # rollups and decision_rows are clustered on their keys (no rowid): rows are picked
    # by their key instead
    key = {"rollups": f"({', '.join(ROLLUP_KEY)})",
           "decision_rows": f"({', '.join(DECISION_PK)})"}.get(table, "rowid")
    removed = 0
    while True:
        with store.lock, store.db.atomic():
            n = store.db.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key.strip('()')} FROM {table} "
                f"WHERE {column} < ? LIMIT ?)", [before, chunk]).rowcount
        removed += n
        if n < chunk:
            return removed
        time.sleep(0)  # let a waiting ingest take the lock


def prune(store: Store, now_ns: int, policy: Policy) -> dict[str, int]:
    """Delete what is past its retention and already rolled up; returns rows removed."""
    rolled = _state(store, "rolled_upto_ns")
    if rolled is None:
        return {}
    cutoff = min(now_ns - policy.decisions_ns, floor_to(rolled - LATE_NS, MINUTE))
    out = {"decisions": _delete_chunks(store, "decision_rows", "time_ns", cutoff,
                                       policy.chunk),
           "counters": _delete_chunks(store, "counters", "window_end_ns", cutoff, policy.chunk)}
    keep_from = now_ns - policy.rollups_ns
    out["rollups"] = _delete_chunks(store, "rollups", "bucket_ns", keep_from, policy.chunk)
    out["lost_events"] = _delete_chunks(store, "lost_events", "time_ns", keep_from,
                                        policy.chunk)
    with store.lock, store.db.atomic():
        old = _state(store, "pruned_before_ns") or 0
        _set_state(store, "pruned_before_ns", max(old, cutoff))
    return out


def pruned_before(db: Any) -> int:
    """Where per-connection rows end (0: nothing pruned); reports use rollups before it."""
    row = db.execute("SELECT value_ns FROM retention WHERE name = 'pruned_before_ns'"
                     ).fetchone()
    return int(row[0]) if row else 0


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
            except Exception as e:  # keep serving; the next pass retries
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("retention pass failed: %s", self.last_error)
