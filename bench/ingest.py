"""Collector ingest rate: Store.ingest (sqlite-utils, dedup, epochs, key lookup) against
raw sqlite3 executemany of ready-made row tuples into the same schema, same process.
Batches as agents send them (decisions in columns) and as one message per decision
(older agents); Store.ingest from two agents' streams at once (a thread each, as the
gRPC server runs them). Median of 5 runs each, interleaved; the size and the protobuf
parse + serialise cost of a batch in each form; then the process's RSS while 2 million
decisions go in (it should stay flat).
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

from natlens.collector.store.db import DECISION_INSERT, Store
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack, to_message

BATCHES, PER_BATCH, RUNS = 100, 2000, 5


def make_rows() -> list[list[DecisionRow]]:
    return [[DecisionRow(1_700_000_000_000_000_000 + b * PER_BATCH + i, "tcp",
                         f"10.244.{i % 7}.{(b * 31 + i) % 250}", (b * PER_BATCH + i) % 65535,
                         "10.1.122.241", 9999, "10.244.1.168" if i % 2 else "10.244.2.74", 80,
                         ct_id=b * PER_BATCH + i, source=pb.SOURCE_NETLINK,
                         event=pb.EVENT_NEW) for i in range(PER_BATCH)]
            for b in range(BATCHES)]


def make_batches(columns: bool = True) -> list[pb.Batch]:
    """The agents' form (columns), or one message per decision."""
    out = []
    for seq, rows in enumerate(make_rows(), start=1):
        b = pb.Batch(agent_id="a", boot_id="b", seq=seq, node="n")
        if columns:
            b.columns.CopyFrom(pack(rows))
        else:
            b.decisions.extend(to_message(r) for r in rows)
        out.append(b)
    return out


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
    s = Store(str(path))
    t = time.perf_counter()
    for b in batches:
        s.ingest(b)
    dt = time.perf_counter() - t
    s.close()
    return dt


def via_store_streams(batches: list[pb.Batch], path: Path, streams: int = 2) -> float:
    """The same, from ``streams`` agents at once, each on its own thread as the gRPC
    server runs each agent's stream; returns seconds per decision-set of one agent."""
    s = Store(str(path))
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
    Store(str(path)).close()  # same schema and indexes
    tuples = [[(r.time_ns, r.client_ip, r.client_port, r.ct_id, 0, 0, 0, 0, 0, 0, 1, 1)
               for r in rows] for rows in make_rows()]
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_while_ingesting(batches: list[pb.Batch], path: Path, rounds: int = 10) -> list[float]:
    """RSS after each round of the same 200,000 decisions (new sequence numbers)."""
    s = Store(str(path))
    out = []
    for r in range(rounds):
        for b in batches:
            s.ingest(_shifted(b, r, seq=r * len(batches) + b.seq))
        out.append(round(rss_mb(), 1))
    s.close()
    return out


def main() -> None:
    batches, messages = make_batches(), make_batches(columns=False)
    n = BATCHES * PER_BATCH
    times: dict[str, list[float]] = {"columns": [], "messages": [], "raw": [], "streams": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(RUNS):
            times["columns"].append(via_store(batches, Path(d) / f"s{i}.db"))
            times["messages"].append(via_store(messages, Path(d) / f"m{i}.db"))
            times["raw"].append(via_raw(Path(d) / f"r{i}.db"))
            times["streams"].append(via_store_streams(batches, Path(d) / f"t{i}.db"))
    med = {k: statistics.median(v) for k, v in times.items()}
    r = med["raw"]
    print(f"ingest {n} decisions in {BATCHES} batches, median of {RUNS}")
    for k, label in (("columns", "Store.ingest, columns (agents)"),
                     ("messages", "Store.ingest, one message per decision"),
                     ("streams", "Store.ingest, columns, 2 agents at once"),
                     ("raw", "raw executemany of built tuples")):
        runs = ", ".join(f"{n / t / 1000:.0f}k" for t in times[k])
        print(f"{label}: {n / med[k]:,.0f}/s (ratio to raw {r / med[k]:.2f}; runs {runs})")
    for label, form in (("columns", batches), ("messages", messages)):
        wire = [b.SerializeToString() for b in form]
        t = time.perf_counter()
        for w in wire:
            pb.Batch.FromString(w).SerializeToString()
        dt = time.perf_counter() - t
        print(f"wire, {label}: {len(wire[0]):,} bytes a batch; parse + serialise "
              f"{dt / n * 1e6:.2f} us a decision")
    with tempfile.TemporaryDirectory() as d:
        rss = memory_while_ingesting(batches, Path(d) / "m.db")
    print(f"RSS (MB) after each 200,000 of {len(rss) * n:,} decisions: {rss}")


if __name__ == "__main__":
    main()
