"""The agent's whole pipeline without a kernel to watch: a source in memory, the rules
reader replaced, and a real collector (gRPC server and SQLite file) in this process.

What the source hands the sink must reach the store exactly once: decisions, kernel
counters and losses, under the rules snapshot read at start; the agent is ready once
the rules were read, says what it saw on stopping, and exits 0 when every batch was
acknowledged.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from natlens.agent.config import AgentConfig
from natlens.agent.pipeline import Agent
from natlens.agent.rules.model import DeclaredModel
from natlens.agent.sources.stage import Sink
from natlens.collector.report.build import ReportQuery, build_report
from natlens.collector.server import start
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow

from .test_grpc import free_port
from .test_retention import EPS, MODEL, T0, VIP, row


class MemorySource:
    """Hands over a fixed script of rows, counters and losses, one step per turn."""

    name = "memory"
    proto = pb.SOURCE_NETLINK

    def __init__(self, steps: list[list[DecisionRow] | pb.CounterDelta | pb.LostEvents]
                 ) -> None:
        self.steps = steps
        self.stats = {"new": 0}
        self.opened = self.finished = False
        self.turns = 0

    def open(self) -> None:
        self.opened = True

    def capabilities(self) -> set[str]:
        return set()

    def run(self, sink: Sink, stop: threading.Event) -> None:
        while not stop.is_set():
            sink.turn()
            self.turns += 1
            if self.steps:
                step = self.steps.pop(0)
                if isinstance(step, list):
                    self.stats["new"] += len(step)
                    sink.decisions(step)
                elif isinstance(step, pb.CounterDelta):
                    sink.counter(step)
                else:
                    sink.lost(step)
            stop.wait(0.01)
        self.finished = True


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[str, SqliteStore]]:
    store = SqliteStore(str(tmp_path / "db"))
    server, port = start(store, "127.0.0.1:0")
    yield f"127.0.0.1:{port}", store
    server.stop(0)
    store.close()


def read_model(ns: str | None) -> DeclaredModel:
    assert ns == "lab-node"
    return MODEL


def test_a_source_in_memory_reaches_the_store_exactly_once(
        collector: tuple[str, SqliteStore], tmp_path: Path) -> None:
    address, store = collector
    rows = [row(time.time_ns() + i, EPS[i % 3 == 0]) for i in range(300)]
    counter = pb.CounterDelta(window_start_ns=T0, window_end_ns=time.time_ns(),
                              protocol="tcp", vip=VIP, vip_port=80, endpoint_ip=EPS[1],
                              endpoint_port=8080, connections=9, epoch="e1",
                              total_connections=9, source=pb.SOURCE_EBPF)
    lost = pb.LostEvents(time_ns=time.time_ns(), source=pb.SOURCE_NETLINK, reason="enobufs",
                         count=4)
    source = MemorySource([rows[:100], counter, rows[100:], lost])
    health = f"127.0.0.1:{free_port()}"
    cfg = AgentConfig(collector=address, node="n1", netns="lab-node", keep_privileges=True,
                      batch_size=64, batch_age=0.05, health_listen=health, rules_interval=60,
                      drain_timeout=10)
    agent = Agent(cfg, source=source, read=read_model)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(agent.run()))
    t.start()
    deadline = time.monotonic() + 20
    while source.steps and time.monotonic() < deadline:
        time.sleep(0.02)
    ready = urllib.request.urlopen(f"http://{health}/readyz", timeout=5)
    assert ready.status == 200
    metrics = urllib.request.urlopen(f"http://{health}/metrics", timeout=5).read().decode()
    assert 'natlens_agent_lost_events_total{reason="enobufs",source="netlink"} 4.0' in metrics
    agent.stop()
    t.join(30)
    assert result == [0] and source.opened and source.finished
    assert agent.rules.reads == 1 and agent.shipper.pending == 0
    (entry,) = build_report(store, ReportQuery())["services"]
    # two sources on one node: counted from the kernel counter, the decisions beside it
    assert entry["source"] == "ebpf" and entry["sources"] == {"ebpf": 9, "netlink": 300}
    assert {e["endpoint"]: e["observed"] for e in entry["endpoints"]} == {
        f"{EPS[0]}:8080": 0, f"{EPS[1]}:8080": 9}
    assert entry["rules_version"] == MODEL.hash
    want = {f"{ep}:8080": sum(1 for r in rows if r.endpoint_ip == ep) for ep in EPS}
    assert dict(store.db.execute("SELECT endpoint, COUNT(*) FROM decisions GROUP BY endpoint"
                                 ).fetchall()) == want
    lost_rows = store.db.execute("SELECT reason, SUM(count) FROM lost_events GROUP BY "
                                 "reason").fetchall()
    assert lost_rows == [("enobufs", 4)]
    assert store.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 300
