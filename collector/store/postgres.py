"""The PostgreSQL backend: one database shared by several collector replicas.

Each replica accepts agents' streams. A batch is stored exactly once however an agent's
retries and failovers land: its (agent, boot, sequence) row is inserted first in the
batch's transaction, and a second replica inserting the same key waits for the first
to commit and then finds it (a duplicate, acknowledged, nothing written). Batches of one
node are serialized by an advisory lock on the node, so counter and loss increases are
computed against the last stored total whichever replica stored it. Decision rows go in
by ``COPY`` into day partitions; retention drops whole partitions, and rollups and
retention run on one replica at a time (a session advisory lock; the others skip).

Connection settings come from the URL and libpq's own sources: ``PG*`` environment
variables and the password file (``PGPASSFILE``, ``~/.pgpass``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Loader

from natlens.collector.store.api import StoreUnavailable
from natlens.collector.store.open import redact
from natlens.collector.store.pg_schema import (
    found_version,
    migrate,
    partition_name,
    partition_sql,
)
from natlens.collector.store.plan import DAY, MINUTE, floor_to
from natlens.collector.store.schema import (
    DECISION_PK,
    DECISION_ROW,
    SCHEMA_VERSION,
    TIME_COLUMN,
    SchemaError,
)
from natlens.collector.store.sql import LATE_NS, SqlStore
from natlens.collector.store.validate import validate
from natlens.collector.store.write import BatchWriter, insert_sql
from natlens.proto import natlens_pb2 as pb

log = logging.getLogger("natlens.collector.store")

SCHEMES = ("postgresql://", "postgres://")
_MAINTENANCE_LOCK = "natlens-maintenance"
_TABLES = ("batches", "counter_totals", "counters", "decision_keys", "decision_rows",
           "endpoint_epochs", "lost_events", "lost_totals", "pods", "retention", "rollups",
           "rule_snapshots", "services")
_COPY = f"COPY decision_rows ({', '.join(DECISION_ROW)}) FROM STDIN"


def is_url(db: str) -> bool:
    return db.startswith(SCHEMES)


class _IntLoader(Loader):
    """SUM() of bigint is numeric: read whole numbers back as int, as SQLite gives them."""

    def load(self, data: Any) -> int | Decimal:
        d = Decimal(bytes(data).decode())
        return int(d) if d == d.to_integral_value() else d


@functools.lru_cache(maxsize=512)
def _q(sql: str) -> str:
    """``?`` placeholders (the portable spelling) as psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


def connect(url: str, read_only: bool) -> psycopg.Connection[Any]:
    options = "-c default_transaction_read_only=on" if read_only else ""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, options=options,
                               application_name="natlens")
    except psycopg.Error as e:
        raise StoreUnavailable(f"{redact(url)}: {_first_line(e)}") from None
    conn.adapters.register_loader("numeric", _IntLoader)
    return conn


def _first_line(e: BaseException) -> str:
    """libpq's message as one line: the server's reason when it gave one."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    first = lines[0]
    return first.split("FATAL:", 1)[1].strip() if "FATAL:" in first else first


class PostgresStore(BatchWriter, SqlStore):
    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url, self.path, self.read_only = url, redact(url), read_only
        self.conn = connect(url, read_only)
        try:
            if read_only:
                found = found_version(self.conn)
                if found is None:
                    raise SchemaError("an empty database: no collector has written to it yet")
                if found < SCHEMA_VERSION:
                    raise SchemaError(f"database schema version {found} was written by an "
                                      "older natlens; a collector upgrades it when it starts")
            else:
                migrate(self.conn)
        except BaseException:
            self.conn.close()
            raise
        # reads on their own connection: a report never waits behind a batch's COPY
        self.reader = self.conn if read_only else connect(url, True)
        self.lock = threading.Lock()
        self._partitions: set[int] = set()
        self._init_writer(self.conn.execute(
            "SELECT node, time_ns, hash FROM rule_snapshots ORDER BY node, time_ns"))
        self._snapshot_counts: dict[str, int] = {}

    def close(self) -> None:
        for c in {id(self.conn): self.conn, id(self.reader): self.reader}.values():
            c.close()

    def _revive(self, writer: bool = True) -> None:
        """Connections lost (the server restarted, a failover): open them again, or
        StoreUnavailable while the server is away."""
        if writer and self.conn.closed:
            self.conn = connect(self.url, self.read_only)
            log.warning("%s: connected again", self.path)
        if self.reader.closed:
            self.reader = self.conn if self.read_only else connect(self.url, True)

    # ---- reads (sql.py)

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            self._revive(writer=False)
            return self.reader.execute(_q(sql), list(args)).fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise StoreUnavailable(f"{self.path}: {_first_line(e)}") from None

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.lock:
            self._revive()
            with self.conn.transaction():
                yield lambda sql, args=(): self.conn.execute(_q(sql), list(args))

    # ---- the statements BatchWriter runs

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> int:
        return self.conn.execute(_q(sql), list(args)).rowcount

    def _fetch(self, sql: str, args: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(_q(sql), list(args)).fetchone()

    def _exec_many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_q(sql), list(rows))

    def _insert_decisions(self, rows: Iterable[tuple[Any, ...]], n: int) -> int:
        """COPY straight into the table; when a row is there already (a decision sent
        twice), the COPY is undone and the rows go through a temporary table and
        ``ON CONFLICT DO NOTHING``."""
        rows = list(rows)
        try:
            with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(_COPY) as cp:
                for r in rows:
                    cp.write_row(r)
            return n
        except pg_errors.UniqueViolation:
            pass
        cols = ", ".join(DECISION_ROW)
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE decision_rows) "
                          "ON COMMIT DELETE ROWS")
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY incoming ({cols}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            cur.execute(f"INSERT INTO decision_rows ({cols}) SELECT {cols} FROM incoming "
                        f"ON CONFLICT ({', '.join(DECISION_PK)}) DO NOTHING")
            inserted = cur.rowcount
            cur.execute("DELETE FROM incoming")
        return inserted

    # ---- ingest

    def ingest(self, batch: pb.Batch) -> bool:
        validate(batch)

        def before() -> None:  # in the batch's transaction
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                              [f"natlens-node:{batch.node}"])
            self._refresh_epochs(batch.node)

        with self.lock:
            try:
                self._revive()
                times = batch.columns.time_ns  # within 31 days of each other (validate)
                self._ensure_partitions(set(range(min(times) // DAY, max(times) // DAY + 1))
                                        if times else set())
                return self._ingest_with(batch, self.conn.transaction, before)
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:  # server away
                raise StoreUnavailable(f"{self.path}: {_first_line(e)}") from None

    def _refresh_epochs(self, node: str) -> None:
        """Another replica may have stored this node's rules: read them when the count
        differs from what this replica knows."""
        row = self.conn.execute("SELECT COUNT(*) FROM rule_snapshots WHERE node = %s",
                                [node]).fetchone()
        n = int(row[0]) if row else 0
        if n != self.epochs.count(node):
            self.epochs.replace(node, self.conn.execute(
                "SELECT time_ns, hash FROM rule_snapshots WHERE node = %s ORDER BY time_ns",
                [node]).fetchall())

    def _ensure_partitions(self, days: set[int]) -> None:
        """Partitions for these days (since 1970) and for today and tomorrow, made outside
        the batch's transaction: creating one locks the parent table."""
        today = time.time_ns() // DAY
        days = days | {today, today + 1}
        missing = days - self._partitions
        if not missing:
            return
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('natlens-partitions'))")
            for day in sorted(missing):
                if day >= 0:
                    self.conn.execute(partition_sql(day))
        self._partitions |= missing

    # ---- names

    def record_pods(self, pods: Iterable[Any]) -> None:
        with self._write():
            self._exec_many(insert_sql("pods", ("ip", "namespace", "name", "node", "from_ns",
                                                "to_ns")),
                            [(p.ip, p.namespace, p.name, p.node, p.from_ns, p.to_ns)
                             for p in pods])

    def pod_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                      now: int) -> None:
        if opened or closed:
            with self._write():
                self._write_intervals("pods", opened, closed, now)

    def service_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                          now: int) -> None:
        if opened or closed:
            with self._write():
                self._write_intervals("services", opened, closed, now)

    def add_k8s_epoch(self, namespace: str, name: str, endpoints: str, now: int) -> None:
        with self._write():
            self._write_k8s_epoch(namespace, name, endpoints, now)

    # ---- maintenance: one replica at a time

    @contextmanager
    def _leader(self) -> Iterator[bool]:
        """Whether this replica holds the maintenance lock (held for the block)."""
        with self.lock:
            self._revive()
            got = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                    [_MAINTENANCE_LOCK]).fetchone()
        held = bool(got and got[0])
        try:
            yield held
        finally:
            if held and not self.conn.closed:  # a lost session released it already
                with self.lock:
                    self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))",
                                      [_MAINTENANCE_LOCK])

    def rollup(self, now_ns: int) -> tuple[int, int]:
        with self._leader() as leader:
            if not leader:
                log.debug("rollup: another replica holds the maintenance lock")
                end = floor_to(now_ns, MINUTE)
                return end, end
            return super().rollup(now_ns)

    def prune(self, now_ns: int, decisions_ns: int, rollups_ns: int,
              chunk: int) -> dict[str, int]:
        """Drop the day partitions of decision rows wholly past retention and rolled up
        (rows are kept up to a day longer than the retention asks); delete the rest of
        what is past its retention ``chunk`` rows per transaction."""
        with self._leader() as leader:
            if not leader:
                return {}
            rolled = self._mark("rolled_upto_ns")
            if rolled is None:
                return {}
            cutoff = min(now_ns - decisions_ns, floor_to(rolled - LATE_NS, MINUTE))
            keep_from = now_ns - rollups_ns
            out = {"decisions": self._drop_partitions(cutoff),
                   "counters": self._delete_chunks("counters", "window_end_ns", cutoff, chunk),
                   "rollups": self._delete_chunks("rollups", "bucket_ns", keep_from, chunk),
                   "lost_events": self._delete_chunks("lost_events", "time_ns", keep_from,
                                                      chunk)}
            with self._write() as run:
                self._set_mark(run, "pruned_before_ns",
                               max(self._mark("pruned_before_ns") or 0, cutoff))
            return out

    def partitions(self) -> list[int]:
        """Days that have a partition of decision rows, oldest first."""
        return sorted(int(name.rsplit("_d", 1)[1]) for (name,) in self._rows(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'decision_rows'::regclass"))

    def _drop_partitions(self, before: int) -> int:
        removed = 0
        for day in self.partitions():
            if (day + 1) * DAY > before:
                break
            with self._write() as run:
                n = run(f"SELECT COUNT(*) FROM {partition_name(day)}").fetchone()[0]
                run(f"DROP TABLE {partition_name(day)}")
            self._partitions.discard(day)
            removed += int(n)
        return removed

    def _delete_chunks(self, table: str, column: str, before: int, chunk: int) -> int:
        removed = 0
        while True:
            with self._write() as run:
                n: int = run(f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "
                             f"WHERE {column} < ? LIMIT ?)", [before, chunk]).rowcount
            removed += n
            if n < chunk:
                return removed
            time.sleep(0)

    # ---- about the store

    def ping(self) -> None:
        self._rows("SELECT 1")

    def size_bytes(self) -> int:
        row = self._one("SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = "
                        "current_schema() AND c.relkind IN ('r', 'p')")
        return int(row[0]) if row else 0

    def stats(self) -> dict[str, Any]:
        tables = []
        for table in _TABLES:
            col = TIME_COLUMN.get(table)
            what = f", MIN({col}), MAX({col})" if col else ""
            row = self._one(f"SELECT COUNT(*){what} FROM {table}")
            assert row is not None
            entry: dict[str, Any] = {"table": "decisions" if table == "decision_rows"
                                     else table, "rows": int(row[0])}
            if col:
                entry |= {"oldest_ns": row[1], "newest_ns": row[2]}
            tables.append(entry)
        tables.sort(key=lambda t: t["table"])
        size = self.size_bytes()
        decisions = next((t["rows"] for t in tables if t["table"] == "decisions"), 0)
        version = self._one("SELECT version FROM schema_version")
        return {"path": self.path, "bytes": size,
                "schema_version": int(version[0]) if version else None, "tables": tables,
                "partitions": len(self.partitions()),
                "bytes_per_decision": round(size / decisions, 1) if decisions else None}
