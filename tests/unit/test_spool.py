"""The agent's disk spool: batches survive a collector outage and an agent restart, are
stored once, and past the size limit decisions are counted in aggregate, exactly."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.rules.live import to_snapshot
from natlens.agent.ship.batch import Batcher
from natlens.agent.ship.client import Shipper
from natlens.agent.ship.spool import Aggregator, Spool
from natlens.collector.report.build import ReportQuery, build_report
from natlens.collector.server import start
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, count, pack

from .test_grpc import free_port
from .test_retention import EPS, MODEL, T0, decision, row


def counts(db: Path) -> dict[str, int]:
    store = SqliteStore(str(db), read_only=True)
    try:
        rep = build_report(store, ReportQuery())
    finally:
        store.close()
    return {e["endpoint"]: e["observed"] for s in rep["services"] for e in s["endpoints"]}


def feed(batcher: Batcher, n: int, offset: int = 0) -> dict[str, int]:
    truth: dict[str, int] = {}
    for i in range(n):
        ep = EPS[(i + offset) % 3 == 0]
        batcher.add_decision(row(T0 + offset + i, ep))
        truth[f"{ep}:8080"] = truth.get(f"{ep}:8080", 0) + 1
    batcher.flush()
    return truth


def test_spool_files_round_trip_and_bad_ones_are_set_aside(tmp_path: Path) -> None:
    sp = Spool(str(tmp_path / "spool"), 1 << 20)
    b = pb.Batch(agent_id="a", boot_id="b1", seq=7, node="n", columns=pack([decision(T0, EPS[0])]))
    assert sp.put(b) and sp.bytes == len(b.SerializeToString())
    (tmp_path / "spool" / "junk-0000000000000001.pb").write_bytes(b"\xff\x00garbage")
    (tmp_path / "spool" / "half.pb.tmp").write_bytes(b"\x08")
    again = Spool(str(tmp_path / "spool"), 1 << 20)
    assert again.load() == [b]
    assert (tmp_path / "spool" / "junk-0000000000000001.pb.bad").exists()
    assert not (tmp_path / "spool" / "half.pb.tmp").exists()
    again.remove("b1", 7)
    assert again.bytes == 0 and again.load() == []


def test_a_restarted_agent_resends_its_spool_and_nothing_is_stored_twice(
        tmp_path: Path) -> None:
    port = free_port()
    spool_dir = str(tmp_path / "spool")
    # collector down: the first agent run spools everything, then dies (no drain)
    first = Shipper(f"127.0.0.1:{port}", backoff=(0.05, 0.1), spool=Spool(spool_dir, 1 << 24))
    first.start()
    b1 = Batcher("agent", "n1", first.submit, max_records=50)
    b1.add_rules(to_snapshot(MODEL, T0 - 1))
    truth = feed(b1, 500)
    first.stop()
    assert len(list(Path(spool_dir).glob("*.pb"))) == 11
    # collector up; a second run of the agent, a new boot, finds the spool
    store = SqliteStore(str(tmp_path / "db"))
    server, _ = start(store, f"127.0.0.1:{port}")
    try:
        second = Shipper(f"127.0.0.1:{port}", spool=Spool(spool_dir, 1 << 24))
        second.start()
        b2 = Batcher("agent", "n1", second.submit, max_records=50)
        more = feed(b2, 200, offset=1000)
        assert second.drain(20)
        second.stop()
        # a copy of an already delivered batch comes back (a resend after a lost ack)
        third = Shipper(f"127.0.0.1:{port}")
        third.start()
        third.submit(pb.Batch(agent_id="agent", boot_id=b1.boot_id, seq=3, node="n1"))
        assert third.drain(20)
        third.stop()
    finally:
        server.stop(0)
        store.close()
    want = {k: truth.get(k, 0) + more.get(k, 0) for k in {*truth, *more}}
    assert counts(tmp_path / "db") == want
    assert list(Path(spool_dir).glob("*.pb")) == []
    assert sqlite_utils.Database(tmp_path / "db")["decisions"].count == 700


def test_a_full_spool_counts_in_aggregate_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    agg = Aggregator("spool-test")
    shipper = Shipper(f"127.0.0.1:{port}", backoff=(0.05, 0.1),
                      spool=Spool(str(tmp_path / "spool"), 6000), degrade=agg.aggregate)
    shipper.start()
    b = Batcher("agent", "n1", shipper.submit, max_records=100)
    b.add_rules(to_snapshot(MODEL, T0 - 1))
    truth = feed(b, 2000)
    assert agg.not_kept > 0 and shipper.spool is not None and shipper.spool.full_events > 0
    assert shipper.spool.bytes <= 6000
    store = SqliteStore(str(tmp_path / "db"))
    server, _ = start(store, f"127.0.0.1:{port}")
    try:
        assert shipper.drain(20)
    finally:
        shipper.stop()
        server.stop(0)
        store.close()
    assert counts(tmp_path / "db") == truth          # exact, partly from counters
    db = sqlite_utils.Database(tmp_path / "db")
    kept = db["decisions"].count
    assert kept + agg.not_kept == 2000 and kept < 2000
    lost = db.execute("SELECT reason, SUM(count) FROM lost_events GROUP BY reason").fetchall()
    assert lost == [("spool-full: counted, not kept per connection", agg.not_kept)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([pb.EVENT_NEW, pb.EVENT_DESTROY,
                                           pb.EVENT_RECOVERED, pb.EVENT_SNAPSHOT]),
                          st.integers(0, 2), st.integers(0, 10**6)), max_size=60),
       st.integers(1, 4))
def test_aggregate_totals_are_running_sums(events: list[tuple[int, int, int]],
                                           splits: int) -> None:
    agg = Aggregator("e")
    ds = [DecisionRow(T0 + i, "tcp", "10.244.9.9", 1000 + i, "10.96.0.10", 80,
                      f"10.244.0.{ep}", 8080, event=ev, source=pb.SOURCE_NETLINK,
                      orig_bytes=nb, reply_bytes=1)
          for i, (ev, ep, nb) in enumerate(events)]
    last: dict[tuple[str, int], pb.CounterDelta] = {}
    size = max(1, len(ds) // splits)
    for k in range(0, len(ds), size):
        out = agg.aggregate(pb.Batch(columns=pack(ds[k:k + size])))
        assert not count(out) and out.lost[0].count == len(ds[k:k + size])
        for c in out.counters:
            prev = last.get((c.endpoint_ip, c.endpoint_port))
            assert prev is None or c.total_connections >= prev.total_connections
            last[(c.endpoint_ip, c.endpoint_port)] = c
    for ep in range(3):
        c = last.get((f"10.244.0.{ep}", 8080))
        mine = [e for e in events if e[1] == ep]
        new = sum(1 for e in mine if e[0] in (pb.EVENT_NEW, pb.EVENT_RECOVERED))
        closed = [e for e in mine if e[0] == pb.EVENT_DESTROY]
        if c is None:
            assert new == 0 and not closed
        else:
            assert c.total_connections == new and c.total_closed == len(closed)
            assert c.total_orig_bytes == sum(e[2] for e in closed)
            assert c.total_reply_bytes == len(closed)
