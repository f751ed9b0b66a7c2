"""The SQLite backend (the embedded default): one file in WAL mode, one writer.

``ingest`` commits a whole batch or nothing, and a batch already stored (same agent,
boot and sequence) is acknowledged as a duplicate without writing anything again.
Writes take ``lock``; reads (``sql.py``) run on the same connection or, for the HTTP
side, on a read-only one that never blocks the writer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
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

from natlens.collector.store.api import BatchRejected, PodRecord, StoreUnavailable
from natlens.collector.store.epochs import RulesEpochs
from natlens.collector.store.plan import MINUTE, floor_to
from natlens.collector.store.schema import (
    COUNTER_COLUMNS,
    DECISION_KEY,
    DECISION_PK,
    DECISION_ROW,
    ROLLUP_KEY,
    check_version,
    found_version,
    migrate,
)
from natlens.collector.store.sql import LATE_NS, SqlStore
from natlens.collector.store.validate import check_key, model_json, validate
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import KEY_OF, OPTIONAL, column, count
from natlens.proto.names import EVENTS, SOURCES, endpoint_key

log = logging.getLogger("natlens.collector.store")

# A row whose identity (time, key, client, conntrack id, zone) is stored already is the
# same decision sent twice: kept once, and counted (SqliteStore.repeated_decisions).
DECISION_INSERT = (f"INSERT OR IGNORE INTO decision_rows ({', '.join(DECISION_ROW)}) "
                   f"VALUES ({', '.join('?' * len(DECISION_ROW))})")
KEY_INSERT = (f"INSERT OR IGNORE INTO decision_keys ({', '.join(DECISION_KEY)}) "
              f"VALUES ({', '.join('?' * len(DECISION_KEY))})")
KEY_SELECT = (f"SELECT id FROM decision_keys WHERE "
              f"{' AND '.join(f'{c} = ?' for c in DECISION_KEY)}")
MAX_CACHED_KEYS = 1_000_000
_SAMPLED = (pb.EVENT_NEW, pb.EVENT_DESTROY)
# The time column of each table that has one (a rollup's is the start of its bucket).
TIME_COLUMN = {"decision_rows": "time_ns", "counters": "window_end_ns", "rollups": "bucket_ns",
               "rule_snapshots": "time_ns", "lost_events": "time_ns", "batches": "received_ns",
               "pods": "from_ns", "services": "from_ns", "endpoint_epochs": "time_ns"}


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


class SqliteStore(SqlStore):
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
        # decision key → (its id in decision_keys, sample rate); ids taken in an open
        # transaction are in _new_keys until it commits: a rollback takes them away
        self._keys: dict[tuple[str, str, int], dict[tuple[Any, ...], tuple[int, int]]] = {}
        self._new_keys: list[tuple[str, str, int, tuple[Any, ...]]] = []
        self.epochs = RulesEpochs(self.db.execute(
            "SELECT node, time_ns, hash FROM rule_snapshots ORDER BY node, time_ns"))
        self.repeated_decisions = 0

    def close(self) -> None:
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

    def rules_at(self, node: str, t: int) -> str:
        return self.epochs.at(node, t)

    # ---- ingest

    def ingest(self, batch: pb.Batch) -> bool:
        """Store a batch atomically; False if it was already stored (a resend).

        Rows are built under the lock: built outside it, while another stream's rows
        are written, they were slower (sqlite3 gives the GIL up and takes it back for
        every row it steps, so the two threads queue on the GIL; BENCHMARKS.md)."""
        validate(batch)
        with self.lock:
            if self.db.execute("SELECT 1 FROM batches WHERE agent_id=? AND boot_id=? AND seq=?",
                               [batch.agent_id, batch.boot_id, batch.seq]).fetchone():
                return False
            added: list[tuple[int, str]] = []  # rules versions this batch brought
            try:
                with self.db.atomic():
                    self._store(batch, added)
            except sqlite3.OperationalError as e:  # disk full, I/O error: retry later
                self._forget(batch.node, added)
                raise StoreUnavailable(f"cannot write to {self.path}: {e}") from None
            except BaseException:
                self._forget(batch.node, added)
                raise
            finally:
                self._new_keys.clear()
        return True

    def _forget(self, node: str, added: list[tuple[int, str]]) -> None:
        """A batch was rolled back: the versions and key ids it brought are not stored."""
        self.epochs.drop(node, added)
        for n, h, rate, raw in self._new_keys:
            self._keys.get((n, h, rate), {}).pop(raw, None)

    def _store(self, batch: pb.Batch, added: list[tuple[int, str]]) -> None:
        self.db.table("batches").insert({
            "agent_id": batch.agent_id, "boot_id": batch.boot_id, "seq": batch.seq,
            "node": batch.node, "received_ns": time.time_ns(),
            "records": count(batch) + len(batch.rules) + len(batch.lost)
            + len(batch.counters)})
        epochs = []
        for r in batch.rules:
            self.db.table("rule_snapshots").insert({
                "node": batch.node, "time_ns": r.time_ns, "hash": r.hash, "mode": r.mode,
                "model": json.dumps(model_json(r))}, ignore=True)
            epochs.append((r.time_ns, r.hash))
        added += self.epochs.add(batch.node, epochs)
        if batch.columns.time_ns:
            # Plain executemany: sqlite-utils' insert_all ran at 0.43x its speed on this
            # table, the collector's hottest path (BENCHMARKS.md).
            rows = self._column_rows(batch.node, batch.columns, max(batch.sample_rate, 1))
            before = self.db.conn.total_changes  # keys are in by now
            self.db.conn.executemany(DECISION_INSERT, rows)
            repeated = count(batch) - (self.db.conn.total_changes - before)
            if repeated:
                self.repeated_decisions += repeated
                log.warning("batch %d from %s: %d decisions were stored already (same time, "
                            "service port, endpoint, client and conntrack id): kept once",
                            batch.seq, batch.agent_id, repeated)
        self.db.table("counters").insert_all(
            row for c in batch.counters if (row := self._counter_row(batch.node, c)) is not None)
        self.db.table("lost_events").insert_all(
            row for lo in batch.lost if (row := self._lost_row(batch.node, lo)) is not None)

    def _column_rows(self, node: str, cols: pb.DecisionColumns,
                     rate: int) -> Iterable[tuple[Any, ...]]:
        """Rows for DECISION_INSERT from columns (what agents send): the key work is
        done once per key of the batch, and the rows are zipped together in C."""
        n = len(cols.time_ns)
        times = list(cols.time_ns)
        keys = [KEY_OF(k) for k in cols.keys]
        first = min(times)
        if self.epochs.one_version(node, first, max(times)):
            h = self.epochs.at(node, first)
            infos = [self._key_info(node, h, rate, k) for k in keys]
            ids, rates = [x[0] for x in infos], [x[1] for x in infos]
            key_ids = [ids[k] for k in cols.key_index]
            sample_rates = [rates[k] for k in cols.key_index]
        else:
            per_row = [self._key_info(node, self.epochs.at(node, t), rate, keys[k])
                       for t, k in zip(times, cols.key_index, strict=True)]
            key_ids, sample_rates = [x[0] for x in per_row], [x[1] for x in per_row]
        return zip(times, cols.client_ip, cols.client_port, cols.ct_id,
                   *(column(cols, c, n) for c in OPTIONAL),
                   key_ids, sample_rates, strict=True)

    def _key_info(self, node: str, h: str, rate: int, raw: tuple[Any, ...]) -> tuple[int, int]:
        info = self._keys.get((node, h, rate), {}).get(raw)
        return info if info is not None else self._new_key(node, h, rate, raw)

    def _new_key(self, node: str, h: str, rate: int,
                 raw: tuple[Any, ...]) -> tuple[int, int]:
        """Find or add the row of a key seen for the first time, and cache (key id,
        sample rate of its event)."""
        check_key(raw)
        proto, vip, vport, eip, eport, src, ev = raw
        if sum(map(len, self._keys.values())) >= MAX_CACHED_KEYS:
            self._keys.clear()  # a churning cluster: start the cache over
        key = (node, proto, vip, vport, endpoint_key(eip, eport), SOURCES[src], EVENTS[ev], h)
        self.db.execute(KEY_INSERT, key)
        info = (int(self.db.execute(KEY_SELECT, key).fetchone()[0]),
                rate if ev in _SAMPLED else 1)
        self._keys.setdefault((node, h, rate), {})[raw] = info
        self._new_keys.append((node, h, rate, raw))
        return info

    def _counter_row(self, node: str, c: pb.CounterDelta) -> dict[str, Any] | None:
        """The increase over the last stored total for this epoch and key (None if
        nothing new): a counter resent after a restart, or an older total arriving
        late, adds nothing."""
        key = {"node": node, "epoch": c.epoch, "protocol": c.protocol, "vip": c.vip,
               "vip_port": c.vip_port, "endpoint": endpoint_key(c.endpoint_ip, c.endpoint_port)}
        totals = dict(zip(COUNTER_COLUMNS, (
            c.total_connections, c.total_closed, c.total_orig_packets, c.total_orig_bytes,
            c.total_reply_packets, c.total_reply_bytes, c.total_duration_ns), strict=True))
        cols = ", ".join(COUNTER_COLUMNS)
        last = self.db.execute(
            f"SELECT {cols} FROM counter_totals WHERE node=? AND epoch=? AND protocol=? "
            "AND vip=? AND vip_port=? AND endpoint=?", list(key.values())).fetchone()
        increase = {k: totals[k] - (last[i] if last else 0)
                    for i, k in enumerate(COUNTER_COLUMNS)}
        if not any(v > 0 for v in increase.values()):
            return None
        if any(v < 0 for v in increase.values()):
            raise BatchRejected(f"counter total went backwards within epoch {c.epoch}")
        self.db.table("counter_totals").upsert({**key, **totals}, pk=tuple(key))
        return {**key, "window_start_ns": c.window_start_ns, "window_end_ns": c.window_end_ns,
                "rules_hash": self.epochs.at(node, c.window_end_ns),
                "source": SOURCES.get(c.source, "ebpf"), **increase}

    def _lost_row(self, node: str, lo: pb.LostEvents) -> dict[str, Any] | None:
        source = SOURCES.get(lo.source, "unknown")
        n = lo.count
        if lo.epoch:  # cumulative within the epoch: store the increase only
            key = {"node": node, "epoch": lo.epoch, "source": source, "reason": lo.reason}
            last = self.db.execute(
                "SELECT total FROM lost_totals WHERE node=? AND epoch=? AND source=? AND "
                "reason=?", list(key.values())).fetchone()
            n = lo.total - (last[0] if last else 0)
            if n <= 0:
                return None
            self.db.table("lost_totals").upsert({**key, "total": lo.total}, pk=tuple(key))
        return {"node": node, "time_ns": lo.time_ns, "source": source, "reason": lo.reason,
                "count": n, "recovered": lo.recovered}

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
        col = "ip" if table == "pods" else "vip"
        with self.lock, self.db.atomic():
            for ip, h in closed:
                self.db.execute(f"UPDATE {table} SET to_ns = ? WHERE {col} = ? AND "
                                "namespace = ? AND name = ? AND to_ns IS NULL",
                                [now, ip, h.namespace, h.name])
            for ip, h in opened:
                row = {col: ip, "namespace": h.namespace, "name": h.name, "from_ns": now,
                       "to_ns": None}
                if with_node:
                    row["node"] = h.node
                self.db.table(table).insert(row)

    def add_k8s_epoch(self, namespace: str, name: str, endpoints: str, now: int) -> None:
        """Every node's rules get a new version from now (same model, tagged), so
        decisions before and after are judged apart even before kube-proxy has
        rewritten the node's rules."""
        tag = hashlib.sha256(f"{namespace}/{name}\n{endpoints}".encode()).hexdigest()[:12]
        with self.lock, self.db.atomic():
            self.db.table("endpoint_epochs").insert({"namespace": namespace, "name": name,
                                                     "time_ns": now, "endpoints": endpoints})
            for node in self.epochs.nodes():
                current = self.epochs.at(node, now)
                row = self.db.execute("SELECT mode, model FROM rule_snapshots WHERE node = ? "
                                      "AND hash = ? LIMIT 1", [node, current]).fetchone()
                if row is None:
                    continue
                tagged = f"{current.split('@', 1)[0]}@k8s:{tag}"
                self.db.table("rule_snapshots").insert({
                    "node": node, "time_ns": now, "hash": tagged, "mode": row[0],
                    "model": row[1]}, ignore=True)
                self.epochs.add(node, [(now, tagged)])

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
