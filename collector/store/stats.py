"""``natlens db stats``: how big the store is and how far back each table reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlite_utils

# The time column of each table that has one (a rollup's is the start of its bucket).
TIME_COLUMN = {"decision_rows": "time_ns", "counters": "window_end_ns", "rollups": "bucket_ns",
               "rule_snapshots": "time_ns", "lost_events": "time_ns", "batches": "received_ns",
               "pods": "from_ns", "services": "from_ns", "endpoint_epochs": "time_ns"}


def file_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in (Path(path), Path(path + "-wal"))
               if p.exists())


def db_stats(db: sqlite_utils.Database, path: str) -> dict[str, Any]:
    tables = []
    for table in sorted(db.table_names()):
        rows = db.execute(f"SELECT COUNT(*) FROM [{table}]").fetchone()[0]
        # decision_rows holds one row per decision: shown as the decisions users query
        name = "decisions" if table == "decision_rows" else table
        entry: dict[str, Any] = {"table": name, "rows": rows}
        col = TIME_COLUMN.get(table)
        if col:
            lo, hi = db.execute(f"SELECT MIN({col}), MAX({col}) FROM [{table}]").fetchone()
            entry |= {"oldest_ns": lo, "newest_ns": hi}
        tables.append(entry)
    tables.sort(key=lambda t: t["table"])
    size = file_bytes(path)
    decisions = next((t["rows"] for t in tables if t["table"] == "decisions"), 0)
    version = db.execute("SELECT version FROM schema_version").fetchone()[0]
    return {"path": path, "bytes": size, "schema_version": version, "tables": tables,
            "bytes_per_decision": round(size / decisions, 1) if decisions else None}
