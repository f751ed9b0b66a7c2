"""Collector ingest rate: SqliteStore.ingest (dedup, epochs, key lookup) against raw
sqlite3 executemany of ready-made row tuples into the same schema, same process.
Batches as agents send them (decisions in columns), from one agent and from two agents'
streams at once (a thread each, as the gRPC server runs them). Median of 5 runs each,
interleaved; the size and the protobuf parse + serialise cost of a batch; then the
process's RSS while 2 million decisions go in (it should stay flat).
Run: .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import decision_batches, decision_rows, rss_mib

from natlens.collector.store.sqlite import DECISION_INSERT, SqliteStore
from natlens.proto import natlens_pb2 as pb

BATCHES, PER_BATCH, RUNS = 100, 2000, 5


def _shifted(b: pb.Batch, k: int, **fields: Any) -> pb.Batch:
    """A copy of ``b`` with other decisions (times moved by ``k`` ns; the store keeps a
    decision sent twice once)."""
    c = pb.Batch()
    c.CopyFrom(b)
    for name, value in fields.items():
        setattr(c, name, value)
    c.columns.time_ns[:] = [t + k for t in b.columns.time_ns]
    return c


def via_store(batches: list[pb.Batch], path: Path) -> float:
    s = SqliteStore(str(path))
    t = time.perf_counter()
    for b in batches:
        s.ingest(b)
    dt = time.perf_counter() - t
    s.close()
    return dt


def via_store_streams(batches: list[pb.Batch], path: Path, streams: int = 2) -> float:
    """The same, from ``streams`` agents at once, each on its own thread as the gRPC
    server runs each agent's stream; returns seconds per decision-set of one agent."""
    s = SqliteStore(str(path))
    per_agent = []
    for a in range(streams):
        mine = []
        for b in batches:
            mine.append(_shifted(b, a, agent_id=f"a{a}"))
        per_agent.append(mine)
    threads = [threading.Thread(target=lambda m=m: [s.ingest(b) for b in m])
               for m in per_agent]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    s.close()
    return dt / streams


def via_raw(path: Path) -> float:
    """The least any writer of this schema does: the row tuples already built (key id
    known), executemany and commit per batch."""
    SqliteStore(str(path)).close()  # same schema and indexes
    tuples = [[(r.time_ns, r.client_ip, r.client_port, r.ct_id, 0, 0, 0, 0, 0, 0, 1, 1)
               for r in rows] for rows in decision_rows(BATCHES, PER_BATCH)]
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    t = time.perf_counter()
    for rows in tuples:
        with c:
            c.executemany(DECISION_INSERT, rows)
    dt = time.perf_counter() - t
    c.close()
    return dt


def memory_while_ingesting(batches: list[pb.Batch], path: Path, rounds: int = 10) -> list[float]:
    """RSS after each round of the same 200,000 decisions (new sequence numbers)."""
    s = SqliteStore(str(path))
    out = []
    for r in range(rounds):
        for b in batches:
            s.ingest(_shifted(b, r, seq=r * len(batches) + b.seq))
        out.append(round(rss_mib(), 1))
    s.close()
    return out


def main() -> None:
    batches = decision_batches(BATCHES, PER_BATCH)
    n = BATCHES * PER_BATCH
    times: dict[str, list[float]] = {"columns": [], "raw": [], "streams": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(RUNS):
            times["columns"].append(via_store(batches, Path(d) / f"s{i}.db"))
            times["raw"].append(via_raw(Path(d) / f"r{i}.db"))
            times["streams"].append(via_store_streams(batches, Path(d) / f"t{i}.db"))
    med = {k: statistics.median(v) for k, v in times.items()}
    r = med["raw"]
    print(f"ingest {n} decisions in {BATCHES} batches, median of {RUNS}")
    for k, label in (("columns", "SqliteStore.ingest, one agent"),
                     ("streams", "SqliteStore.ingest, 2 agents at once"),
                     ("raw", "raw executemany of built tuples")):
        runs = ", ".join(f"{n / t / 1000:.0f}k" for t in times[k])
        print(f"{label}: {n / med[k]:,.0f}/s (ratio to raw {r / med[k]:.2f}; runs {runs})")
    wire = [b.SerializeToString() for b in batches]
    t = time.perf_counter()
    for w in wire:
        pb.Batch.FromString(w).SerializeToString()
    dt = time.perf_counter() - t
    print(f"wire: {len(wire[0]):,} bytes a batch; parse + serialise "
          f"{dt / n * 1e6:.2f} us a decision")
    with tempfile.TemporaryDirectory() as d:
        rss = memory_while_ingesting(batches, Path(d) / "m.db")
    print(f"RSS (MB) after each 200,000 of {len(rss) * n:,} decisions: {rss}")


if __name__ == "__main__":
    main()
