"""Hostile input at the collector: limits per agent, garbage on the wire, fuzzed batches.
No crash, a clear status, nothing stored from a refused batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlite_utils
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natlens.agent.ship.client import Shipper
from natlens.collector.ingest.limits import Limits, OverLimit, RateLimiter
from natlens.collector.server import start
from natlens.collector.store.api import BatchRejected
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack
from natlens.proto.names import EVENTS, SOURCES, endpoint_key

from .test_retention import EPS, T0, decision


def test_rate_limiter_paces_and_refuses() -> None:
    now = [0.0]
    rl = RateLimiter(Limits(max_batch_records=500, records_per_second=100,
                            burst_seconds=2, max_wait=5), clock=lambda: now[0])
    assert rl.wait_for("a", 200) == 0          # the burst
    assert rl.wait_for("a", 100) == pytest.approx(1.0)
    assert rl.wait_for("b", 200) == 0          # another agent has its own bucket
    now[0] += 10
    assert rl.wait_for("a", 150) == 0
    with pytest.raises(OverLimit, match="max-batch-records"):
        rl.wait_for("a", 501)
    with pytest.raises(OverLimit, match="max-agent-rate"):
        for _ in range(20):
            rl.wait_for("c", 400)


@pytest.fixture
def collector(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, SqliteStore]]:
    store = SqliteStore(str(tmp_path / "db"))
    kw = getattr(request, "param", {})
    server, port = start(store, "127.0.0.1:0", **kw)
    yield port, store
    server.stop(0)
    store.close()


def batches(n: int, per: int, boot: str = "b") -> list[pb.Batch]:
    return [pb.Batch(agent_id="a", boot_id=boot, seq=k + 1, node="n1", columns=pack([
        decision(T0 + k * per + i, EPS[i % 2]) for i in range(per)])) for k in range(n)]


@pytest.mark.parametrize("collector", [{"limits": Limits(records_per_second=2000,
                                                         burst_seconds=0.5)}], indirect=True)
def test_a_fast_agent_is_slowed_down_not_refused(collector: tuple[int, SqliteStore],
                                                 tmp_path: Path) -> None:
    port, _ = collector
    s = Shipper(f"127.0.0.1:{port}")
    s.start()
    t = time.monotonic()
    for b in batches(12, 500):
        s.submit(b)
    assert s.drain(30)
    elapsed = time.monotonic() - t
    s.stop()
    assert sqlite_utils.Database(tmp_path / "db")["decisions"].count == 6000
    assert elapsed > 2.0  # 6,000 records at 2,000/s after a 1,000-record burst


@pytest.mark.parametrize("collector", [{"limits": Limits(max_batch_records=100)}],
                         indirect=True)
def test_an_oversized_batch_is_refused_and_kept(collector: tuple[int, SqliteStore], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    port, _ = collector
    s = Shipper(f"127.0.0.1:{port}", backoff=(0.05, 0.1))
    s.start()
    with caplog.at_level(logging.ERROR, "natlens.agent.ship"):
        s.submit(batches(1, 101)[0])
        assert not s.drain(1.0)
    s.stop()
    assert s.pending == 1 and sqlite_utils.Database(tmp_path / "db")["decisions"].count == 0
    assert any("RESOURCE_EXHAUSTED" in r.getMessage() and "max-batch-records" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("collector", [{"max_streams": 1}], indirect=True)
def test_streams_beyond_the_limit_are_refused(collector: tuple[int, SqliteStore]) -> None:
    port, _ = collector
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    upload = ch.stream_stream("/natlens.v1.Collector/Upload",
                              request_serializer=pb.Batch.SerializeToString,
                              response_deserializer=pb.Ack.FromString)
    gate = iter(batches(1, 1))

    def slow() -> Iterator[pb.Batch]:
        yield next(gate)
        time.sleep(3)

    first = upload(slow())
    assert next(first).seq == 1                 # the one allowed stream is open
    with pytest.raises(grpc.RpcError) as e:
        list(upload(iter(batches(1, 1, boot="c"))))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()
    ch.close()


def test_garbage_on_the_wire_gets_a_status_and_the_collector_goes_on(
        collector: tuple[int, SqliteStore], tmp_path: Path) -> None:
    port, _ = collector
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    raw = ch.stream_stream("/natlens.v1.Collector/Upload")  # bytes in, bytes out
    for junk in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
        with pytest.raises(grpc.RpcError) as e:
            list(raw(iter([junk])))
        assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    s = Shipper(f"127.0.0.1:{port}")
    s.start()
    for b in batches(2, 10):
        s.submit(b)
    assert s.drain(10)
    s.stop()
    ch.close()
    assert sqlite_utils.Database(tmp_path / "db")["decisions"].count == 20


def batch_and_rows(v: bool) -> st.SearchStrategy[tuple[pb.Batch, list[DecisionRow]]]:
    """A batch and its decisions: every field valid (``v``: then the batch is stored),
    or any value of the field's wire type."""
    def pick(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
             ) -> st.SearchStrategy[Any]:
        return valid if v else st.one_of(valid, anything)

    address = pick(st.sampled_from(["10.1.0.1", "10.244.1.9", "fd00::1"]),
                   st.text(alphabet="0123456789.", max_size=8))
    port = pick(st.integers(0, 65535), st.integers(0, 2**32 - 1))
    name = pick(st.sampled_from(["a", "n1"]), st.text(max_size=3))
    rows = st.lists(st.builds(
        DecisionRow, time_ns=pick(st.integers(10**18, 10**18 + 30 * 86_400 * 10**9),
                                  st.integers(-2**63, 2**63 - 1)),
        protocol=pick(st.sampled_from(["tcp", "udp"]), st.text(max_size=4)),
        client_ip=address, client_port=port, vip=address, vip_port=port, endpoint_ip=address,
        endpoint_port=port, ct_id=st.integers(0, 3),
        source=pick(st.integers(1, 3), st.integers(0, 5)),
        event=pick(st.integers(1, 4), st.integers(0, 6)), zone=st.integers(0, 2),
        orig_packets=st.integers(0, 2**64 - 1), orig_bytes=st.integers(0, 2**64 - 1),
        reply_packets=st.integers(0, 2**64 - 1), reply_bytes=st.integers(0, 2**64 - 1),
        duration_ns=st.integers(-2**63, 2**63 - 1)), max_size=4)
    batch = st.builds(
        pb.Batch, agent_id=name, boot_id=name, seq=pick(st.integers(1, 3), st.integers(0, 3)),
        node=name, sample_rate=st.integers(0, 5),
        counters=st.lists(st.builds(
            pb.CounterDelta, epoch=name, vip=address, endpoint_ip=address,
            protocol=pick(st.just("tcp"), st.text(max_size=3)), vip_port=port,
            total_connections=st.integers(0, 10)), max_size=3),
        rules=st.lists(st.builds(pb.RuleSnapshot, hash=name, mode=name), max_size=2))
    return st.tuples(batch, rows)


def _count(store: SqliteStore, table: str) -> int:
    return int(store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(batch_and_rows(True), batch_and_rows(False)))
def test_fuzzed_batches_are_stored_whole_or_refused_whole(tmp_path_factory: pytest.TempPathFactory,
                                                         fuzzed: tuple[pb.Batch,
                                                                       list[DecisionRow]]
                                                         ) -> None:
    batch, rows = fuzzed
    batch.columns.CopyFrom(pack(rows))
    store = SqliteStore(str(tmp_path_factory.mktemp("fz") / "db"))
    try:
        try:
            store.ingest(batch)
        except BatchRejected:
            for table in ("batches", "decisions", "counters", "rule_snapshots", "lost_events"):
                assert _count(store, table) == 0, table
            return
        # Stored whole: the batch, each distinct snapshot, a counter row per key whose
        # total grew, and each decision once: the first sent of those with one identity
        # (time, service port, endpoint, source, event, client, conntrack id and zone).
        assert _count(store, "batches") == 1
        first: dict[tuple[Any, ...], DecisionRow] = {}
        for r in rows:
            first.setdefault((r.time_ns, r.protocol, r.vip, r.vip_port, r.endpoint_ip,
                              r.endpoint_port, r.source, r.event, r.client_ip, r.client_port,
                              r.ct_id, r.zone), r)
        assert _count(store, "decisions") == len(first)
        fields = ("time_ns", "client_ip", "client_port", "vip", "vip_port", "ct_id", "zone",
                  "orig_packets", "orig_bytes", "reply_packets", "reply_bytes", "duration_ns")
        stored = store.db.execute(f"SELECT {', '.join(fields)}, endpoint, source, event "
                                  "FROM decisions").fetchall()
        assert sorted(r[:len(fields)] for r in stored) == sorted(
            tuple(getattr(r, f) for f in fields) for r in first.values())
        assert {(r[-3], r[-2], r[-1]) for r in stored} == {
            (endpoint_key(r.endpoint_ip, r.endpoint_port), SOURCES[r.source], EVENTS[r.event])
            for r in first.values()}
        assert all(0 <= r[2] <= 65535 and 0 <= r[4] <= 65535 for r in stored)
        assert _count(store, "rule_snapshots") == len({(r.time_ns, r.hash)
                                                       for r in batch.rules})
        grew = {(c.epoch, c.protocol, c.vip, c.vip_port, c.endpoint_ip, c.endpoint_port)
                for c in batch.counters if c.total_connections}
        assert _count(store, "counter_totals") == len(grew)
    finally:
        store.close()


@pytest.mark.parametrize("collector", [{"max_message_bytes": 1 << 16}], indirect=True)
def test_a_message_over_the_size_limit_is_refused(collector: tuple[int, SqliteStore],
                                                  tmp_path: Path) -> None:
    port, _ = collector
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    upload = ch.stream_stream("/natlens.v1.Collector/Upload",
                              request_serializer=pb.Batch.SerializeToString,
                              response_deserializer=pb.Ack.FromString)
    big = batches(1, 5000)[0]
    assert big.ByteSize() > 1 << 16
    with pytest.raises(grpc.RpcError) as e:
        list(upload(iter([big])))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (ack,) = list(upload(iter(batches(1, 10, boot="small"))))
    assert ack.seq == 1
    ch.close()
