"""The PostgreSQL store against its references, on a real server started here
(tests/pgserver.py: initdb in a temporary directory, fsync off as for every test server).

1. Ingest through the real front door: two ``natlens collector`` processes on one
   database, one agent stream to each (gRPC over loopback, 100 batches × 2,000
   decisions per stream, every batch acknowledged), both at once; decisions per second
   from the first send to the last acknowledgement. Reference, in the same run: a raw
   ``COPY`` of the same rows (their decision_rows tuples, keys already in) into the same
   schema from one connection. Median of RUNS.
2. The report over N decisions (10 million over a day by default, the data of
   bench/store_queries.py) on SQLite and on the same rows copied into PostgreSQL with
   ``natlens db copy``: before any rollup (every row aggregated, once) and with the
   rollups (median of 5).

Run: .venv/bin/python bench/postgres_store.py   (root: the server runs as ``postgres``;
N=10000000 RUNS=3 by default, about 15 minutes)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import decision_batches, proc_cpu, start_collector  # noqa: E402
from store_queries import fill, timed  # noqa: E402

from natlens.collector.report.build import ReportQuery, build_report  # noqa: E402
from natlens.collector.store.copy import copy_store  # noqa: E402
from natlens.collector.store.open import open_store  # noqa: E402
from natlens.collector.store.plan import DAY  # noqa: E402
from natlens.collector.store.retention import rollup  # noqa: E402
from natlens.collector.store.schema import DECISION_ROW  # noqa: E402
from natlens.proto import natlens_pb2 as pb  # noqa: E402
from natlens.proto import natlens_pb2_grpc as pb_grpc  # noqa: E402
from tests.pgserver import PgServer  # noqa: E402

N = int(os.environ.get("N", 10_000_000))
RUNS = int(os.environ.get("RUNS", 3))
BATCHES, PER_BATCH, STREAMS = 100, 2000, 2


def streams() -> list[list[pb.Batch]]:
    """One agent's batches per stream (its own agent id and node)."""
    out = []
    for s in range(STREAMS):
        batches = decision_batches(BATCHES, PER_BATCH)
        for b in batches:
            b.agent_id, b.node = f"agent-{s}", f"node-{s}"
        out.append(batches)
    return out


def grpc_run(server: PgServer, work: list[list[pb.Batch]], d: Path) -> tuple[float, float]:
    """(decisions per second, collectors' CPU µs per decision) for every stream at once,
    one collector per stream, on a new database."""
    url = server.create_db()
    cols = [start_collector(url, d / f"collector-{i}.log") for i in range(STREAMS)]  # type: ignore[arg-type]
    try:
        stubs = [pb_grpc.CollectorStub(grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]))
            for _, port in cols]
        for i, stub in enumerate(stubs):  # warm up: keys, partitions; not measured
            list(stub.Upload(iter([pb.Batch(agent_id=f"warm-{i}", boot_id="b", seq=1,
                                            node=f"node-{i}", columns=work[i][0].columns)])))
        acks = [0] * STREAMS

        def send(i: int) -> None:
            acks[i] = sum(1 for _ in stubs[i].Upload(iter(work[i])))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(STREAMS)]
        c0 = sum(proc_cpu(p.pid) for p, _ in cols)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        cpu = sum(proc_cpu(p.pid) for p, _ in cols) - c0
        assert acks == [BATCHES] * STREAMS, acks
    finally:
        for p, _ in cols:
            p.terminate()
            p.wait(timeout=60)
    n = STREAMS * BATCHES * PER_BATCH
    return n / dt, cpu / n * 1e6


def copy_run(server: PgServer, work: list[list[pb.Batch]]) -> float:
    """Rows per second of a raw COPY of the same decisions (as decision_rows tuples, key
    ids already known) into the same schema, one connection."""
    import psycopg

    url = server.create_db()
    store = open_store(url)
    # the keys and partitions in place, as the collector has them after its first batch
    for i, w in enumerate(work):
        store.ingest(pb.Batch(agent_id=f"warm-{i}", boot_id="b", seq=1, node=f"node-{i}",
                              columns=w[0].columns))
    rows = []
    for i, w in enumerate(work):
        for b in w:
            rows += list(store._column_rows(f"node-{i}", b.columns, 1))
    store.close()
    rows = [(r[0] + 1, *r[1:]) for r in rows]  # not the warm-up's identities
    with psycopg.connect(url, autocommit=True) as c:
        t0 = time.perf_counter()
        with c.transaction(), c.cursor() as cur, cur.copy(
                f"COPY decision_rows ({', '.join(DECISION_ROW)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        dt = time.perf_counter() - t0
    return len(rows) / dt


def report_part(server: PgServer, d: Path) -> dict[str, object]:
    from store_queries import T0

    path = d / "big.db"
    t = time.perf_counter()
    fill(path)
    filled = time.perf_counter() - t
    url = server.create_db()
    t = time.perf_counter()
    copy_store(str(path), url)
    copied = time.perf_counter() - t
    out: dict[str, object] = {"decisions": N, "sqlite_fill_s": round(filled), "copy_s":
                              round(copied)}
    stores = {"sqlite": str(path), "postgresql": url}
    totals = {}
    for name, db in stores.items():
        r = open_store(db, read_only=True)
        out[f"{name}_report_without_rollups_s"] = round(timed(
            lambda r=r: build_report(r, ReportQuery()), runs=1), 3)
        r.close()
    for name, db in stores.items():
        w = open_store(db)
        t = time.perf_counter()
        rollup(w, T0 + DAY + 10 * 60 * 10**9)
        out[f"{name}_rollup_pass_s"] = round(time.perf_counter() - t, 1)
        w.close()
        r = open_store(db, read_only=True)
        out[f"{name}_report_s"] = round(timed(lambda r=r: build_report(r, ReportQuery())), 3)
        totals[name] = sum(e["total"] for e in build_report(r, ReportQuery())["services"])
        r.close()
    assert totals["sqlite"] == totals["postgresql"] == N, totals
    out["report_ratio"] = round(out["postgresql_report_s"] / out["sqlite_report_s"], 2)  # type: ignore[operator]
    out["report_without_rollups_ratio"] = round(
        out["postgresql_report_without_rollups_s"]  # type: ignore[operator]
        / out["sqlite_report_without_rollups_s"], 2)  # type: ignore[operator]
    return out


def main() -> None:
    server = PgServer()
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            d = Path(tmp)
            work = streams()
            grpc_rates, cpus, copies, ratios = [], [], [], []
            for _ in range(RUNS):
                rate, cpu = grpc_run(server, work, d)
                raw = copy_run(server, work)
                grpc_rates.append(rate)
                cpus.append(cpu)
                copies.append(raw)
                ratios.append(rate / raw)
            print(json.dumps({
                "ingest_two_replicas_per_s": round(statistics.median(grpc_rates)),
                "collector_cpu_us_per_decision": round(statistics.median(cpus), 2),
                "raw_copy_per_s": round(statistics.median(copies)),
                "ingest_to_copy_ratio": round(statistics.median(ratios), 2),
                "runs": [f"{r / 1000:.0f}k/{c / 1000:.0f}k" for r, c in
                         zip(grpc_rates, copies, strict=True)]}, indent=1), flush=True)
            print(json.dumps(report_part(server, d), indent=1))
    finally:
        server.close()


if __name__ == "__main__":
    main()
