"""Post-incident queries on a big store: 10 million decisions over 24 hours (about 116 a
second: a busy cluster in decision mode), 3 nodes, 50 service ports × 4 endpoints,
5,000 clients. Measures, median of 5 each:
  - the point query "which endpoints did client X reach in that hour" (query decisions),
  - the report over the whole day (rollups for whole minutes) and, for reference, the
    same report before any rollup existed (every row aggregated),
  - database bytes per decision.
Run: .venv/bin/python bench/store_queries.py  (N=10000000 by default; about 4 minutes)
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from natlens.agent.rules.live import to_snapshot
from natlens.agent.rules.model import DeclaredEndpoint, DeclaredModel, ServicePort
from natlens.collector.query.decisions import DecisionQuery, query_decisions
from natlens.collector.report.build import ReportQuery, build_report
from natlens.collector.store.retention import rollup
from natlens.collector.store.sqlite import DECISION_INSERT, SqliteStore
from natlens.collector.store.write import KEY_INSERT, KEY_SELECT
from natlens.proto import natlens_pb2 as pb

N = int(os.environ.get("N", 10_000_000))
DAY = 86400 * 10**9
T0 = 1_790_000_000 * 10**9
NODES = ["node-a", "node-b", "node-c"]
SERVICES = [(f"10.96.{i // 250}.{i % 250 + 1}", 80 + i % 3) for i in range(50)]


def model() -> DeclaredModel:
    return DeclaredModel("iptables", tuple(ServicePort(
        f"ns{i}/svc{i}:http", "clusterIP", vip, port, "tcp", endpoints=tuple(
            DeclaredEndpoint(f"10.244.{i % 200}.{j + 10}:8080", 0.25, f"KUBE-SEP-{i}-{j}")
            for j in range(4))) for i, (vip, port) in enumerate(SERVICES)))


def fill(path: Path) -> None:
    s = SqliteStore(str(path))
    m = model()
    for node in NODES:
        s.ingest(pb.Batch(agent_id=node, boot_id="b", seq=1, node=node,
                          rules=[to_snapshot(m, T0 - 1)]))
    h = m.hash
    s.close()
    c = sqlite3.connect(path)
    c.execute("PRAGMA synchronous = OFF")
    keys: dict[tuple[object, ...], int] = {}

    def key_id(*key: object) -> int:
        if key not in keys:
            c.execute(KEY_INSERT, key)
            keys[key] = c.execute(KEY_SELECT, key).fetchone()[0]
        return keys[key]

    rng = random.Random(7)
    step = DAY // N
    chunk = 200_000
    for base in range(0, N, chunk):
        rows = []
        for k in range(base, min(base + chunk, N)):
            i = rng.randrange(50)
            vip, port = SERVICES[i]
            kid = key_id(NODES[k % 3], "tcp", vip, port,
                         f"10.244.{i % 200}.{rng.randrange(4) + 10}:8080", "netlink", "new", h)
            rows.append((T0 + k * step, f"10.244.{rng.randrange(20)}.{rng.randrange(250)}",
                         1024 + k % 60000, k % 2**31, 0, 0, 0, 0, 0, 0, kid, 1))
        with c:
            c.executemany(DECISION_INSERT, rows)
    c.close()


def timed(fn: object, runs: int = 5) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        path = Path(d) / "big.db"
        t = time.perf_counter()
        fill(path)
        print(f"filled {N:,} decisions in {time.perf_counter() - t:.0f}s")
        db = SqliteStore(str(path), read_only=True)
        client = "10.244.3.77"
        hour = (T0 + 5 * 3600 * 10**9, T0 + 6 * 3600 * 10**9)
        rows, _ = query_decisions(db, DecisionQuery(client=client, since_ns=hour[0],
                                                    until_ns=hour[1], limit=1_000_000))
        point = timed(lambda: query_decisions(db, DecisionQuery(
            client=client, since_ns=hour[0], until_ns=hour[1], limit=1_000_000)))
        raw_report = timed(lambda: build_report(db, ReportQuery()), runs=1)
        s = SqliteStore(str(path))
        t = time.perf_counter()
        rollup(s, T0 + DAY + 10 * 60 * 10**9)
        roll_t = time.perf_counter() - t
        s.close()
        report = timed(lambda: build_report(db, ReportQuery()))
        one = timed(lambda: build_report(db, ReportQuery(service="ns7/svc7:http")))
        total = sum(e["total"] for e in build_report(db, ReportQuery())["services"])
        size = db.size_bytes()
        print(json.dumps({
            "decisions": N, "point_query_s": round(point, 3), "point_query_rows": len(rows),
            "report_day_s": round(report, 3), "report_one_service_s": round(one, 3),
            "report_day_without_rollups_s": round(raw_report, 3),
            "rollup_pass_s": round(roll_t, 1), "report_total": total,
            "bytes_per_decision": round(size / N, 1)}, indent=1))
        db.close()


if __name__ == "__main__":
    main()
