"""Opening a schema-6 file rewrites its decisions into schema 7 (rows clustered on
time): how long that takes for 2,000,000 decisions over 300 keys, and that every row
is there after it. Run: .venv/bin/python bench/migrate.py
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import sqlite_utils

from natlens.collector.store.schema import DECISION_ROW, MIGRATIONS
from natlens.collector.store.sqlite import SqliteStore
from natlens.collector.store.write import KEY_INSERT, KEY_SELECT

N, KEYS = 2_000_000, 300


def schema6(path: Path) -> None:
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.table("schema_version").insert({"version": 0})
    for v in range(1, 7):
        MIGRATIONS[v](db)
    db.execute("UPDATE schema_version SET version = 6")
    c: sqlite3.Connection = db.conn
    ids = []
    for i in range(KEYS):
        key = ("n", "tcp", f"10.1.0.{i % 50}", 80, f"10.244.0.{i}:80", "netlink", "new", "h")
        c.execute(KEY_INSERT, key)
        ids.append(c.execute(KEY_SELECT, key).fetchone()[0])
    rows = ((1_700_000_000_000_000_000 + i * 1000, f"10.244.{i % 7}.{i % 250}", i % 65535, i,
             0, 0, 0, 0, 0, 0, ids[i % KEYS], 1) for i in range(N))
    with c:
        c.executemany(f"INSERT INTO decision_rows ({', '.join(DECISION_ROW)}) VALUES "
                      f"({', '.join('?' * len(DECISION_ROW))})", rows)
    c.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v6.db"
        schema6(path)
        t = time.perf_counter()
        s = SqliteStore(str(path))
        dt = time.perf_counter() - t
        n = s.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        s.close()
    print(f"schema 6 -> 7: {N:,} decisions in {dt:.1f}s; {n:,} decisions after")


if __name__ == "__main__":
    main()
