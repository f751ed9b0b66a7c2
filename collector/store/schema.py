"""Tables and indexes of the collector's SQLite file, with a schema version.

Opening a file written by an older natlens upgrades it through MIGRATIONS; a file from
a newer natlens is refused rather than misread.
"""

from __future__ import annotations

import sqlite_utils

from natlens.errors import NatlensError

SCHEMA_VERSION = 7
# The time column of each table that has one (a rollup's is the start of its bucket).
TIME_COLUMN = {"decision_rows": "time_ns", "counters": "window_end_ns", "rollups": "bucket_ns",
               "rule_snapshots": "time_ns", "lost_events": "time_ns", "batches": "received_ns",
               "pods": "from_ns", "services": "from_ns", "endpoint_epochs": "time_ns"}


class SchemaError(NatlensError, RuntimeError):
    """The database was written by a newer natlens (or is not a natlens database)."""


def _v1(db: sqlite_utils.Database) -> None:
    db.table("batches").create({"agent_id": str, "boot_id": str, "seq": int, "node": str,
                          "received_ns": int, "records": int},
                         pk=("agent_id", "boot_id", "seq"))
    db.table("decisions").create({
        "time_ns": int, "node": str, "protocol": str, "client_ip": str, "client_port": int,
        "vip": str, "vip_port": int, "endpoint": str, "ct_id": int, "zone": int,
        "source": str, "event": str, "orig_packets": int, "orig_bytes": int,
        "reply_packets": int, "reply_bytes": int, "duration_ns": int, "rules_hash": str,
        "sample_rate": int})
    db.table("decisions").create_index(["time_ns"])
    db.table("decisions").create_index(["vip", "vip_port", "protocol", "time_ns"])
    db.table("decisions").create_index(["client_ip", "time_ns"])
    db.table("decisions").create_index(["node", "rules_hash"])
    db.table("rule_snapshots").create({"node": str, "time_ns": int, "hash": str, "mode": str,
                                 "model": str}, pk=("node", "time_ns", "hash"))
    db.table("lost_events").create({"node": str, "time_ns": int, "source": str, "reason": str,
                              "count": int, "recovered": int})
    db.table("pods").create({"ip": str, "namespace": str, "name": str, "node": str,
                       "from_ns": int, "to_ns": int})
    db.table("pods").create_index(["ip", "from_ns"])


COUNTER_COLUMNS = ("connections", "closed", "orig_packets", "orig_bytes", "reply_packets",
                   "reply_bytes", "duration_ns")


def _v2(db: sqlite_utils.Database) -> None:
    """Kernel-side counters (eBPF source): per-window increases, and the last total
    stored per epoch and key, from which each increase is computed exactly once."""
    key = {"node": str, "epoch": str, "protocol": str, "vip": str, "vip_port": int,
           "endpoint": str}
    db.table("counters").create({**key, "window_start_ns": int, "window_end_ns": int,
                                 "rules_hash": str, **dict.fromkeys(COUNTER_COLUMNS, int)})
    db.table("counters").create_index(["vip", "vip_port", "protocol", "window_end_ns"])
    db.table("counters").create_index(["window_end_ns"])
    db.table("counter_totals").create({**key, **dict.fromkeys(COUNTER_COLUMNS, int)},
                                      pk=tuple(key))
    db.table("lost_totals").create({"node": str, "epoch": str, "source": str, "reason": str,
                                    "total": int}, pk=("node", "epoch", "source", "reason"))


ROLLUP_KEY_V3 = ("granularity", "bucket_ns", "node", "protocol", "vip", "vip_port",
                 "rules_hash", "endpoint")
# v5: which source counted it, so a node watched by several sources is counted once
ROLLUP_KEY = (*ROLLUP_KEY_V3, "source")
ROLLUP_COLUMNS = ("connections", "closed", "orig_bytes", "reply_bytes", "orig_packets",
                  "reply_packets")


def _create_rollups(db: sqlite_utils.Database, name: str, key: tuple[str, ...]) -> None:
    # Clustered on its key (WITHOUT ROWID): a report reads a range of buckets in order.
    cols = ", ".join([*(f"{k} {'INTEGER' if k in ('bucket_ns', 'vip_port') else 'TEXT'}"
                        for k in key), *(f"{c} INTEGER" for c in ROLLUP_COLUMNS)])
    db.execute(f"CREATE TABLE {name} ({cols}, PRIMARY KEY ({', '.join(key)})) WITHOUT ROWID")


def _v3(db: sqlite_utils.Database) -> None:
    """Per-minute and per-hour rollups that outlive pruned decisions; the retention
    watermarks; who held a ClusterIP when (from the Kubernetes watch)."""
    _create_rollups(db, "rollups", ROLLUP_KEY_V3)
    db.table("retention").create({"name": str, "value_ns": int}, pk="name")
    db.table("services").create({"vip": str, "namespace": str, "name": str, "from_ns": int,
                                 "to_ns": int})
    db.table("services").create_index(["vip", "from_ns"])
    db.table("endpoint_epochs").create({"namespace": str, "name": str, "time_ns": int,
                                        "endpoints": str})
    db.table("endpoint_epochs").create_index(["namespace", "name", "time_ns"])
    db.table("pods").create_index(["namespace", "name"])


def _v4(db: sqlite_utils.Database) -> None:
    """Decisions keep one index, on time: each secondary index on a random-order key
    (client, VIP) dirtied about one page per row per commit and held ingest near 30,000
    rows/s (BENCHMARKS.md). Every query has a time window to range over, and reports
    read the per-minute rollups, not the rows."""
    for name in ("idx_decisions_node_rules_hash", "idx_decisions_client_ip_time_ns",
                 "idx_decisions_vip_vip_port_protocol_time_ns"):
        db.execute(f"DROP INDEX IF EXISTS {name}")
    # Sampled eBPF decision records, which reports list apart: few rows, own index.
    db.execute("CREATE INDEX idx_decisions_sampled ON decisions (time_ns) "
               "WHERE source = 'ebpf' AND sample_rate > 1")


OLDER_SOURCE = ""  # rollups written before v5: whichever source the node had


def _v5(db: sqlite_utils.Database) -> None:
    """Rollups keyed by source too: a node watched by several sources at once (``agent
    --source all``) must be counted once, from one of them, and compared across them.
    Buckets summed before this version keep their counts under source ``""``."""
    _create_rollups(db, "rollups_v5", ROLLUP_KEY)
    cols = ", ".join([*ROLLUP_KEY_V3, *ROLLUP_COLUMNS])
    db.execute(f"INSERT INTO rollups_v5 ({cols}, source) SELECT {cols}, ? FROM rollups",
               [OLDER_SOURCE])
    db.execute("DROP TABLE rollups")
    db.execute("ALTER TABLE rollups_v5 RENAME TO rollups")
    # counters so far were the eBPF source's, or decisions folded in by a full spool
    db.execute("ALTER TABLE counters ADD COLUMN source TEXT NOT NULL DEFAULT 'ebpf'")
    db.execute("UPDATE counters SET source = (SELECT d.source FROM lost_events d WHERE "
               "d.node = counters.node AND d.reason LIKE 'spool-full%' LIMIT 1) "
               "WHERE epoch LIKE 'spool-%' AND EXISTS (SELECT 1 FROM lost_events d WHERE "
               "d.node = counters.node AND d.reason LIKE 'spool-full%')")


# A decision's columns that repeat across connections: one row per distinct combination.
DECISION_KEY = ("node", "protocol", "vip", "vip_port", "endpoint", "source", "event",
                "rules_hash")
# What is particular to each connection.
DECISION_ROW = ("time_ns", "client_ip", "client_port", "ct_id", "zone", "orig_packets",
                "orig_bytes", "reply_packets", "reply_bytes", "duration_ns", "key_id",
                "sample_rate")
# The view's columns, as the decisions table of schemas 1-5 had them.
DECISION_COLUMNS = ("time_ns", "node", "protocol", "client_ip", "client_port", "vip",
                    "vip_port", "endpoint", "ct_id", "zone", "source", "event", "orig_packets",
                    "orig_bytes", "reply_packets", "reply_bytes", "duration_ns", "rules_hash",
                    "sample_rate")


def _v6(db: sqlite_utils.Database) -> None:
    """Decisions split in two: a narrow row per connection (time, client, counters, and
    the id of its key) and a row per distinct key (node, service port, endpoint, source,
    event, rules version), which repeats across millions of connections. SQLite's insert
    of the 19-column row with its eight text columns (a 71-character rules hash among
    them) ran at 138,000 rows/s with the time index; the narrow row at 210,000, in a
    third of the bytes (bench/decision_indexes.py, BENCHMARKS.md). A view named
    ``decisions`` joins them back, so every query reads the columns it always read. The
    rows keep their order (oldest first)."""
    ints = ("vip_port", "time_ns", "key_id", "client_port", "ct_id", "zone", "orig_packets",
            "orig_bytes", "reply_packets", "reply_bytes", "duration_ns", "sample_rate")
    kcols = ", ".join(f"{c} {'INTEGER' if c in ints else 'TEXT'} NOT NULL" for c in DECISION_KEY)
    db.execute(f"CREATE TABLE decision_keys (id INTEGER PRIMARY KEY, {kcols}, "
               f"UNIQUE ({', '.join(DECISION_KEY)}))")
    rcols = ", ".join(f"{c} {'INTEGER' if c in ints else 'TEXT'}" for c in DECISION_ROW)
    db.execute(f"CREATE TABLE decision_rows ({rcols})")
    keys = ", ".join(f"COALESCE({c}, {0 if c == 'vip_port' else repr('')})"
                     for c in DECISION_KEY)
    db.execute(f"INSERT INTO decision_keys ({', '.join(DECISION_KEY)}) "
               f"SELECT DISTINCT {keys} FROM decisions")
    match = " AND ".join(f"k.{c} = COALESCE(d.{c}, {0 if c == 'vip_port' else repr('')})"
                         for c in DECISION_KEY)
    own = [c for c in DECISION_ROW if c != "key_id"]
    db.execute(f"INSERT INTO decision_rows (key_id, {', '.join(own)}) "
               f"SELECT k.id, {', '.join(f'd.{c}' for c in own)} FROM decisions d "
               f"JOIN decision_keys k ON {match} ORDER BY d.rowid")
    db.execute("DROP TABLE decisions")
    db.execute("CREATE INDEX idx_decision_rows_time_ns ON decision_rows (time_ns)")
    # Sampled eBPF decision records, which reports list apart: few rows, own index.
    db.execute("CREATE INDEX idx_decision_rows_sampled ON decision_rows (time_ns) "
               "WHERE sample_rate > 1")
    _decisions_view(db)


# A decision's identity, and the order rows are kept in: time first.
DECISION_PK = ("time_ns", "key_id", "client_ip", "client_port", "ct_id", "zone")


def _v7(db: sqlite_utils.Database) -> None:
    """Decision rows clustered on time (WITHOUT ROWID, primary key time first): one
    B-tree per insert instead of a table and a time index, and a time range is read in
    place. The insert ran 1.11x faster (median of paired runs) in 26 % fewer bytes per
    row (bench/decision_indexes.py, BENCHMARKS.md). Two rows with the same identity (time,
    key, client, conntrack id and zone) are the same decision sent twice: kept once."""
    ints = {"time_ns", "key_id", "client_port", "ct_id", "zone", "orig_packets",
            "orig_bytes", "reply_packets", "reply_bytes", "duration_ns", "sample_rate"}
    rcols = ", ".join(f"{c} {'INTEGER' if c in ints else 'TEXT'}"
                      f"{' NOT NULL' if c in DECISION_PK else ''}" for c in DECISION_ROW)
    db.execute("DROP VIEW decisions")
    db.execute(f"CREATE TABLE decision_rows_v7 ({rcols}, PRIMARY KEY "
               f"({', '.join(DECISION_PK)})) WITHOUT ROWID")
    pick = ", ".join(f"COALESCE({c}, {repr('') if c == 'client_ip' else 0})"
                     if c in DECISION_PK else c for c in DECISION_ROW)
    db.execute(f"INSERT OR IGNORE INTO decision_rows_v7 ({', '.join(DECISION_ROW)}) "
               f"SELECT {pick} FROM decision_rows")
    db.execute("DROP TABLE decision_rows")
    db.execute("ALTER TABLE decision_rows_v7 RENAME TO decision_rows")
    db.execute("CREATE INDEX idx_decision_rows_sampled ON decision_rows (time_ns) "
               "WHERE sample_rate > 1")
    _decisions_view(db)


def _decisions_view(db: sqlite_utils.Database) -> None:
    # CROSS JOIN keeps the rows as the outer loop: each finds its key by primary key.
    cols = ", ".join(f"{'k' if c in DECISION_KEY else 'r'}.{c} AS {c}"
                     for c in DECISION_COLUMNS)
    db.execute(f"CREATE VIEW decisions AS SELECT {cols} FROM "
               "decision_rows r CROSS JOIN decision_keys k ON k.id = r.key_id")


MIGRATIONS = {1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6, 7: _v7}


def found_version(db: sqlite_utils.Database) -> int | None:
    """The schema version written in the file; None when it is new and empty."""
    if "schema_version" not in db.table_names():
        if db.table_names() or db.view_names():
            raise SchemaError("not a natlens database (tables present, no schema_version)")
        return None
    found = int(db.execute("SELECT version FROM schema_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaError(f"database schema version {found} is newer than this natlens "
                          f"supports ({SCHEMA_VERSION}); upgrade natlens")
    return found


def check_version(db: sqlite_utils.Database) -> None:
    """For read-only use: the file must already have this natlens's schema."""
    found = found_version(db)
    if found is None:
        raise SchemaError("an empty database: no collector has written to it yet")
    if found < SCHEMA_VERSION:
        raise SchemaError(f"database schema version {found} was written by an older natlens; "
                          f"a collector upgrades it to {SCHEMA_VERSION} when it opens it "
                          f"(natlens collector --db …), reading it here would not")


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found on opening."""
    found = found_version(db)
    if found is None:
        db.table("schema_version").create({"version": int})
        db.table("schema_version").insert({"version": 0})
        found = 0
    for v in range(found + 1, SCHEMA_VERSION + 1):
        with db.atomic():
            MIGRATIONS[v](db)
            db.execute("UPDATE schema_version SET version = ?", [v])
    return found
