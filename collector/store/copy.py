"""``natlens db copy``: an SQLite store moved into PostgreSQL, table by table, unchanged.

Rows keep their values (decision key ids included), so every report and query reads the
same before and after. The target must be a new or empty natlens database; the source
is opened read-only and must be at this natlens's schema version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from natlens.collector.store.open import StoreError, open_store
from natlens.collector.store.plan import DAY

log = logging.getLogger("natlens.collector.store")

# Parents before the rows that name them; every table the schema has.
TABLES = ("schema_version", "retention", "rule_snapshots", "endpoint_epochs", "pods",
          "services", "batches", "decision_keys", "decision_rows", "counter_totals",
          "counters", "lost_totals", "lost_events", "rollups")
_FILLED = ("batches", "decision_keys", "rule_snapshots", "counters", "rollups", "pods")


def copy_store(source: str, target: str,
               progress: Callable[[str, int], None] = lambda t, n: None) -> dict[str, int]:
    """Rows copied per table."""
    from natlens.collector.store.postgres import PostgresStore, is_url
    from natlens.collector.store.sqlite import SqliteStore

    if is_url(source) or "://" in source:
        raise StoreError(f"--from {source.split('://')[0]}://…: the source is an SQLite file")
    if not is_url(target):
        raise StoreError(f"--to {target}: the target is a postgresql://… URL")
    src = open_store(source, read_only=True)
    assert isinstance(src, SqliteStore)
    try:
        dst = open_store(target)
        assert isinstance(dst, PostgresStore)
        try:
            return _copy(src, dst, progress)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: Any, dst: Any, progress: Callable[[str, int], None]) -> dict[str, int]:
    busy = [t for t in _FILLED if dst._rows(f"SELECT 1 FROM {t} LIMIT 1")]
    if busy:
        raise StoreError(f"{dst.path}: not empty (rows in {', '.join(busy)}); db copy fills a "
                         "new database only")
    dst._ensure_partitions({int(d) for (d,) in src.db.execute(
        f"SELECT DISTINCT time_ns / {DAY} FROM decision_rows").fetchall()})
    copied: dict[str, int] = {}
    with dst.lock, dst.conn.transaction():
        dst.conn.execute("DELETE FROM schema_version")
        for table in TABLES:
            cols = [r[0] for r in dst.conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s ORDER BY ordinal_position",
                [table]).fetchall()]
            have = {r[1] for r in src.db.execute(f"PRAGMA table_info([{table}])").fetchall()}
            missing = [c for c in cols if c not in have]
            if missing:
                raise StoreError(f"{src.path}: table {table} lacks {', '.join(missing)}")
            n = 0
            with dst.conn.cursor() as cur, cur.copy(
                    f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                for row in src.db.execute(f"SELECT {', '.join(cols)} FROM [{table}]"):
                    cp.write_row(row)
                    n += 1
            copied[table] = n
            progress(table, n)
        dst.conn.execute("SELECT setval(pg_get_serial_sequence('decision_keys', 'id'), "
                         "GREATEST((SELECT MAX(id) FROM decision_keys), 1))")
    return copied
