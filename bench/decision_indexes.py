"""Why decisions keep only their time index: raw `executemany` of the same 200,000 rows
(1,400 distinct clients, time-ordered) into the decisions table with different index
sets, 2,000 rows per transaction as the collector commits them. Median of 3.
Run: .venv/bin/python bench/decision_indexes.py
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from natlens.collector.store.db import DECISION_COLUMNS, DECISION_INSERT

VARIANTS = {
    "no index": [],
    "time (natlens, schema 4)": ["time_ns"],
    "time + client": ["time_ns", "client_ip, time_ns"],
    "time + client + VIP + node/rules (schema 1-3)": [
        "time_ns", "client_ip, time_ns", "vip, vip_port, protocol, time_ns",
        "node, rules_hash"],
}


def rows() -> list[tuple[object, ...]]:
    h = "sha256:" + "0123456789abcdef" * 4
    return [(1_700_000_000_000_000_000 + i * 1000, "n", "tcp", f"10.244.{i % 7}.{i % 200}",
             i % 65535, "10.1.122.241", 9999,
             "10.244.1.168:80" if i % 2 else "10.244.2.74:80", i, 0, "netlink", "new",
             0, 0, 0, 0, 0, h, 1) for i in range(200_000)]


def run(indexes: list[str], data: list[tuple[object, ...]], d: Path) -> tuple[float, float]:
    p = d / "x.db"
    for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm")):
        f.unlink(missing_ok=True)
    c = sqlite3.connect(p)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute(f"CREATE TABLE decisions ({', '.join(DECISION_COLUMNS)})")
    for i, cols in enumerate(indexes):
        c.execute(f"CREATE INDEX i{i} ON decisions ({cols})")
    t = time.perf_counter()
    for b in range(0, len(data), 2000):
        with c:
            c.executemany(DECISION_INSERT, data[b:b + 2000])
    dt = time.perf_counter() - t
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return len(data) / dt, os.path.getsize(p) / len(data)


def main() -> None:
    data = rows()
    with tempfile.TemporaryDirectory() as d:
        for name, idx in VARIANTS.items():
            runs = [run(idx, data, Path(d)) for _ in range(3)]
            rate = statistics.median(r[0] for r in runs)
            print(f"{name:48s} {rate:>10,.0f} rows/s  {runs[0][1]:6.0f} bytes/row")


if __name__ == "__main__":
    main()
