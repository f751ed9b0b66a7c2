"""Collector ingest through its real front door: a `natlens collector` process, one
agent stream (gRPC over loopback) sending 100 batches × 2,000 decisions as an agent
does (every batch acknowledged): decode, rate limits, store, /metrics counting. Reports
decisions per second from the first send to the last acknowledgement, and the
collector process's CPU per decision. Median of 3. Run: .venv/bin/python bench/ingest_grpc.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import grpc
from harness import decision_batches, proc_cpu, start_collector

from natlens.proto import natlens_pb2 as pb
from natlens.proto import natlens_pb2_grpc as pb_grpc

RUNS, BATCHES, PER_BATCH = 3, 100, 2000


def one_run(batches: list[pb.Batch], d: Path, extra: list[str]) -> tuple[float, float]:
    """(seconds, collector CPU seconds) for all batches."""
    col, port = start_collector(d / f"c-{time.monotonic_ns()}.db", d / "collector.log", extra)
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}",
                                   options=[("grpc.max_send_message_length", 64 << 20)])
        stub = pb_grpc.CollectorStub(ch)
        # warm up (first batch creates the keys), not measured
        list(stub.Upload(iter([pb.Batch(agent_id="warm", boot_id="b", seq=1, node="n",
                                        columns=batches[0].columns)])))
        c0, t0 = proc_cpu(col.pid), time.perf_counter()
        acks = sum(1 for _ in stub.Upload(iter(batches)))
        dt, cpu = time.perf_counter() - t0, proc_cpu(col.pid) - c0
        assert acks == len(batches)
        ch.close()
    finally:
        col.terminate()
        col.wait(timeout=30)
    return dt, cpu


def main() -> None:
    n = BATCHES * PER_BATCH
    forms = {"columns (agents)": decision_batches(BATCHES, PER_BATCH)}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in forms}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(RUNS):
            for form, batches in forms.items():
                runs[form].append(one_run(batches, Path(d), []))
    for form, rs in runs.items():
        wall = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        print(f"collector, {form}: {n / wall:,.0f} decisions/s over gRPC, collector CPU "
              f"{cpu / n * 1e6:.2f} us per decision (runs: "
              f"{', '.join(f'{n / r[0] / 1000:.0f}k' for r in rs)})")


if __name__ == "__main__":
    main()
