"""Collector ingest rate: Store.ingest (sqlite-utils, dedup, epochs) against raw sqlite3
executemany into the same schema, same rows, same process; and Store.ingest from two
agents' streams at once (a thread each, as the gRPC server runs them). Median of 3
runs each; then
the process's RSS while 2 million decisions go in (it should stay flat).
Run: .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from natlens.collector.store.db import DECISION_INSERT, Store
from natlens.proto import natlens_pb2 as pb

BATCHES, PER_BATCH, RUNS = 100, 2000, 3


def make_batches() -> list[pb.Batch]:
    out = []
    for b in range(BATCHES):
        ds = [pb.Decision(time_ns=1_700_000_000_000_000_000 + b * PER_BATCH + i, protocol="tcp",
                          client_ip=f"10.244.{i % 7}.{(b * 31 + i) % 250}",
                          client_port=(b * PER_BATCH + i) % 65535,
                          vip="10.1.122.241", vip_port=9999,
                          endpoint_ip="10.244.1.168" if i % 2 else "10.244.2.74",
                          endpoint_port=80, ct_id=b * PER_BATCH + i, source=pb.SOURCE_NETLINK,
                          event=pb.EVENT_NEW) for i in range(PER_BATCH)]
        out.append(pb.Batch(agent_id="a", boot_id="b", seq=b + 1, node="n", decisions=ds))
    return out


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
            c = pb.Batch()
            c.CopyFrom(b)
            c.agent_id = f"a{a}"
            mine.append(c)
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


def via_raw(batches: list[pb.Batch], path: Path) -> float:
    """The least any writer of this schema does: one tuple per decision, straight from
    the protobuf, its key id known (a constant), executemany per batch."""
    Store(str(path)).close()  # same schema and indexes
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    t = time.perf_counter()
    for b in batches:
        with c:
            c.executemany(DECISION_INSERT, [(d.time_ns, d.client_ip, d.client_port,
                                             d.ct_id, d.zone, 0, 0, 0, 0, 0, 1, 1)
                                            for d in b.decisions])
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
            c = pb.Batch()
            c.CopyFrom(b)
            c.seq = r * len(batches) + b.seq
            s.ingest(c)
        out.append(round(rss_mb(), 1))
    s.close()
    return out


def main() -> None:
    batches = make_batches()
    n = BATCHES * PER_BATCH
    store_t, raw_t, streams_t = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(RUNS):
            store_t.append(via_store(batches, Path(d) / f"s{i}.db"))
            raw_t.append(via_raw(batches, Path(d) / f"r{i}.db"))
            streams_t.append(via_store_streams(batches, Path(d) / f"t{i}.db"))
    s, r = statistics.median(store_t), statistics.median(raw_t)
    t2 = statistics.median(streams_t)
    print(f"ingest {n} decisions in {BATCHES} batches")
    print(f"Store.ingest {n / s:,.0f}/s; raw executemany {n / r:,.0f}/s; "
          f"ratio store/raw speed {r / s:.2f}")
    print(f"Store.ingest from 2 agents at once (a thread each): {n / t2:,.0f}/s; "
          f"ratio to raw {r / t2:.2f}")
    with tempfile.TemporaryDirectory() as d:
        rss = memory_while_ingesting(batches, Path(d) / "m.db")
    print(f"RSS (MB) after each 200,000 of {len(rss) * n:,} decisions: {rss}")


if __name__ == "__main__":
    main()
