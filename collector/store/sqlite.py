"""The SQLite backend (the embedded default): one file in WAL mode, one writer.

``ingest`` commits a whole batch or nothing, and a batch already stored (same agent,
boot and sequence) is acknowledged as a duplicate without writing anything again.
Writes take ``lock``; reads (``sql.py``) run on the same connection or, for the HTTP
side, on a read-only one that never blocks the writer.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from natlens.collector.store.api import PodRecord, StoreUnavailable
from natlens.collector.store.plan import MINUTE, floor_to
from natlens.collector.store.schema import (
    DECISION_PK,
    DECISION_ROW,
    ROLLUP_KEY,
    TIME_COLUMN,
    check_version,
    found_version,
    migrate,
)
from natlens.collector.store.sql import LATE_NS, SqlStore
from natlens.collector.store.validate import validate
from natlens.collector.store.write import BatchWriter
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb

# A row whose identity (time, key, client, conntrack id, zone) is stored already is the
# same decision sent twice: kept once, and counted (SqliteStore.repeated_decisions).
DECISION_INSERT = (f"INSERT OR IGNORE INTO decision_rows ({', '.join(DECISION_ROW)}) "
                   f"VALUES ({', '.join('?' * len(DECISION_ROW))})")



class StoreHeld(NatlensError):
    """Another process writes this store: one writer per store."""


def hold(path: str) -> int:
    """An exclusive lock on ``PATH.lock`` for as long as this process lives (flock: the
    kernel drops it when the process dies, kill -9 included). Not on the database
    file itself: closing any descriptor of it would drop SQLite's own locks."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreHeld(f"{path} is written by another natlens process (pid {holder}): one "
                        "writer per store; report and query read it as it is, and "
                        "collector --read-only serves it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def quiescent(path: str) -> bool:
    """No writer has the store open: no WAL beside it (the last connection to close
    removes it), no rollback journal of another program's write, and nobody holds its
    lock. Then a reader opens it immutable, and leaves not even an empty -wal or -shm
    file behind."""
    if os.path.exists(f"{path}-wal") or os.path.exists(f"{path}-journal"):
        return False
    try:
        fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class SqliteStore(BatchWriter, SqlStore):
    def __init__(self, path: str, read_only: bool = False) -> None:
        """``read_only``: for reports and queries, which must not change a byte of the
        file (no migration, no WAL switch, no lock); the schema must be this natlens's.
        A writer holds the store's lock until ``close``."""
        self.path, self.read_only = path, read_only
        self._held = None if read_only else hold(path)
        if read_only:
            mode = "immutable=1" if quiescent(path) else "mode=ro"
            conn = sqlite3.connect(f"file:{quote(path)}?{mode}", uri=True,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(path, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA busy_timeout = 10000")
        if read_only:
            check_version(self.db)
        else:
            found_version(self.db)  # a newer or foreign file is refused before any write
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous = NORMAL")
            migrate(self.db)
        self.lock = threading.Lock()
        self._init_writer(self.db.execute(
            "SELECT node, time_ns, hash FROM rule_snapshots ORDER BY node, time_ns"))

    def close(self) -> None:
        """After the write in flight, if any: closing an sqlite3 connection while
        another thread steps a statement on it crashes the interpreter."""
        with self.lock:
            self.db.close()
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, list(args)).fetchall()
        except sqlite3.DatabaseError as e:  # locked past the busy timeout, damaged, gone
            raise StoreUnavailable(f"{self.path}: {e}") from None

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.lock, self.db.atomic():
            yield lambda sql, args=(): self.db.execute(sql, list(args))

    # ---- ingest

    def ingest(self, batch: pb.Batch) -> bool:
        """Store a batch atomically; False if it was already stored (a resend).

        Rows are built under the lock: built outside it, while another stream's rows
        are written, they were slower (sqlite3 gives the GIL up and takes it back for
        every row it steps, so the two threads queue on the GIL; BENCHMARKS.md)."""
        validate(batch)
        with self.lock:
            try:
                return self._ingest_with(batch, self.db.atomic)
            except sqlite3.OperationalError as e:  # disk full, I/O error: retry later
                raise StoreUnavailable(f"cannot write to {self.path}: {e}") from None

    # ---- the statements BatchWriter runs

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> int:
        return int(self.db.execute(sql, list(args)).rowcount)

    def _fetch(self, sql: str, args: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        row = self.db.execute(sql, list(args)).fetchone()
        return None if row is None else tuple(row)

    def _exec_many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        self.db.conn.executemany(sql, rows)

    def _insert_decisions(self, rows: Iterable[tuple[Any, ...]], n: int) -> int:
        # Plain executemany: sqlite-utils' insert_all ran at 0.43x its speed on this
        # table, the collector's hottest path (BENCHMARKS.md).
        before = self.db.conn.total_changes  # keys are in by now
        self.db.conn.executemany(DECISION_INSERT, rows)
        return int(self.db.conn.total_changes - before)

    # ---- names (the lab, the Kubernetes watch)

    def record_pods(self, pods: Iterable[PodRecord]) -> None:
        with self.lock:
            self.db.table("pods").insert_all(
                {"ip": p.ip, "namespace": p.namespace, "name": p.name, "node": p.node,
                 "from_ns": p.from_ns, "to_ns": p.to_ns} for p in pods)

    def pod_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                      now: int) -> None:
        self._intervals("pods", opened, closed, now, with_node=True)

    def service_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                          now: int) -> None:
        self._intervals("services", opened, closed, now, with_node=False)

    def _intervals(self, table: str, opened: list[tuple[str, Any]],
                   closed: list[tuple[str, Any]], now: int, with_node: bool) -> None:
        if not opened and not closed:
            return
        with self.lock, self.db.atomic():
            self._write_intervals(table, opened, closed, now)

    def add_k8s_epoch(self, namespace: str, name: str, endpoints: str, now: int) -> None:
        with self.lock, self.db.atomic():
            self._write_k8s_epoch(namespace, name, endpoints, now)

    # ---- retention

    def prune(self, now_ns: int, decisions_ns: int, rollups_ns: int,
              chunk: int) -> dict[str, int]:
        """Delete what is past its retention and already rolled up, ``chunk`` rows per
        transaction so that ingest goes on in between."""
        rolled = self._mark("rolled_upto_ns")
        if rolled is None:
            return {}
        cutoff = min(now_ns - decisions_ns, floor_to(rolled - LATE_NS, MINUTE))
        keep_from = now_ns - rollups_ns
        out = {"decisions": self._delete_chunks("decision_rows", "time_ns", cutoff, chunk),
               "counters": self._delete_chunks("counters", "window_end_ns", cutoff, chunk),
               "rollups": self._delete_chunks("rollups", "bucket_ns", keep_from, chunk),
               "lost_events": self._delete_chunks("lost_events", "time_ns", keep_from, chunk)}
        with self._write() as run:
            self._set_mark(run, "pruned_before_ns",
                           max(self._mark("pruned_before_ns") or 0, cutoff))
        return out

    def _delete_chunks(self, table: str, column: str, before: int, chunk: int) -> int:
        # rollups and decision_rows are clustered on their keys (no rowid): rows are picked
        # by their key instead
        key = {"rollups": f"({', '.join(ROLLUP_KEY)})",
               "decision_rows": f"({', '.join(DECISION_PK)})"}.get(table, "rowid")
        removed = 0
        while True:
            with self._write() as run:
                n: int = run(f"DELETE FROM {table} WHERE {key} IN (SELECT {key.strip('()')} FROM "
                        f"{table} WHERE {column} < ? LIMIT ?)", [before, chunk]).rowcount
            removed += n
            if n < chunk:
                return removed
            time.sleep(0)  # let a waiting ingest take the lock

    # ---- about the store

    def ping(self) -> None:
        """A local file: there is no server to lose."""

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (Path(self.path), Path(self.path + "-wal"))
                   if p.exists())

    def stats(self) -> dict[str, Any]:
        tables = []
        for table in sorted(self.db.table_names()):
            rows = self.db.execute(f"SELECT COUNT(*) FROM [{table}]").fetchone()[0]
            # decision_rows holds one row per decision: shown as the decisions users query
            entry: dict[str, Any] = {"table": "decisions" if table == "decision_rows"
                                     else table, "rows": rows}
            col = TIME_COLUMN.get(table)
            if col:
                lo, hi = self.db.execute(f"SELECT MIN({col}), MAX({col}) FROM [{table}]"
                                         ).fetchone()
                entry |= {"oldest_ns": lo, "newest_ns": hi}
            tables.append(entry)
        tables.sort(key=lambda t: t["table"])
        size = self.size_bytes()
        decisions = next((t["rows"] for t in tables if t["table"] == "decisions"), 0)
        version = self.db.execute("SELECT version FROM schema_version").fetchone()[0]
        return {"path": self.path, "bytes": size, "schema_version": version, "tables": tables,
                "bytes_per_decision": round(size / decisions, 1) if decisions else None}
