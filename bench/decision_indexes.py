"""Why decisions keep only their time index, and why their repeating columns moved to
a key table: raw `executemany` of the same 200,000 rows (1,400 distinct clients,
time-ordered) into the 19-column decisions table of schemas 1-5 with different index
sets, into schema 6's narrow rows with a time index, and into schema 7's narrow rows
clustered on time (WITHOUT ROWID), 2,000 rows per transaction as the collector commits
them. Median of 5 (this machine is noisy).
Run: .venv/bin/python bench/decision_indexes.py
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from natlens.collector.store.schema import DECISION_COLUMNS, DECISION_ROW
from natlens.collector.store.sqlite import DECISION_INSERT, SqliteStore
from natlens.collector.store.write import KEY_INSERT, KEY_SELECT

WIDE_INSERT = (f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(DECISION_COLUMNS))})")

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
    _fresh(p)
    c = sqlite3.connect(p)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute(f"CREATE TABLE decisions ({', '.join(DECISION_COLUMNS)})")
    for i, cols in enumerate(indexes):
        c.execute(f"CREATE INDEX i{i} ON decisions ({cols})")
    return _insert_timed(c, p, WIDE_INSERT, data)


def _fresh(p: Path) -> None:
    for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm")):
        f.unlink(missing_ok=True)


def _insert_timed(c: sqlite3.Connection, p: Path, sql: str,
                  data: list[tuple[object, ...]]) -> tuple[float, float]:
    """(rows/s, file bytes per row): 2,000 rows per transaction, as the collector."""
    t = time.perf_counter()
    for b in range(0, len(data), 2000):
        with c:
            c.executemany(sql, data[b:b + 2000])
    dt = time.perf_counter() - t
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return len(data) / dt, os.path.getsize(p) / len(data)


def run_narrow(data: list[tuple[object, ...]], d: Path,
               clustered: bool) -> tuple[float, float]:
    """Schemas 6 and 7: the same rows as the collector stores them, the repeating
    columns as the id of a decision_keys row (looked up in a dict, as the store does);
    a rowid table with a time index (6), or clustered on time (7, the store's own)."""
    p = d / "n.db"
    _fresh(p)
    SqliteStore(str(p)).close()
    c = sqlite3.connect(p)
    c.execute("PRAGMA synchronous=NORMAL")
    if not clustered:
        c.execute("DROP VIEW decisions")
        c.execute("DROP TABLE decision_rows")
        c.execute(f"CREATE TABLE decision_rows ({', '.join(DECISION_ROW)})")
        c.execute("CREATE INDEX idx_decision_rows_time_ns ON decision_rows (time_ns)")
        c.execute("CREATE INDEX idx_decision_rows_sampled ON decision_rows (time_ns) "
                  "WHERE sample_rate > 1")
    ids: dict[tuple[object, ...], int] = {}
    narrow = []
    for (t, node, proto, cip, cport, vip, vport, ep, ct, zone, src, ev, op, ob, rp, rb,
         dur, h, rate) in data:
        key = (node, proto, vip, vport, ep, src, ev, h)
        if key not in ids:
            c.execute(KEY_INSERT, key)
            ids[key] = c.execute(KEY_SELECT, key).fetchone()[0]
        narrow.append((t, cip, cport, ct, zone, op, ob, rp, rb, dur, ids[key], rate))
    c.commit()
    return _insert_timed(c, p, DECISION_INSERT, narrow)


def main() -> None:
    data = rows()
    with tempfile.TemporaryDirectory() as d:
        for name, idx in VARIANTS.items():
            runs = [run(idx, data, Path(d)) for _ in range(5)]
            rate = statistics.median(r[0] for r in runs)
            print(f"{name:48s} {rate:>10,.0f} rows/s  {runs[0][1]:6.0f} bytes/row")
        narrow: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(5):  # interleaved: the two narrow forms see the same noise
            for clustered in (False, True):
                narrow[clustered].append(run_narrow(data, Path(d), clustered))
        for clustered, label in ((False, "schema 6: narrow row + key id, time index"),
                                 (True, "schema 7: narrow row clustered on time")):
            runs = narrow[clustered]
            print(f"{label:48s} {statistics.median(r[0] for r in runs):>10,.0f} rows/s  "
                  f"{runs[0][1]:6.0f} bytes/row")
        ratio = statistics.median(b[0] / a[0] for a, b in zip(narrow[False], narrow[True],
                                                              strict=True))
        print(f"schema 7 / schema 6 insert rate, median of paired runs: {ratio:.2f}")


if __name__ == "__main__":
    main()
