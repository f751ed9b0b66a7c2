"""Decisions as columns: packing is lossless, the store and /metrics read every column,
and columns that do not line up are refused whole."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

from natlens.collector.store.api import BatchRejected
from natlens.collector.store.sqlite import SqliteStore
from natlens.collector.web.metrics import per_key
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import ColumnsError, DecisionRow, check, count, pack, unpack

U32, U64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
ROWS = st.lists(st.builds(
    DecisionRow,
    time_ns=st.integers(0, 2**62), protocol=st.sampled_from(["tcp", "udp", "sctp"]),
    client_ip=st.sampled_from(["10.244.1.169", "fd00::5", "10.244.2.3"]),
    client_port=st.integers(0, 65535), vip=st.sampled_from(["10.1.122.241", "fd00::1"]),
    vip_port=st.integers(0, 65535), endpoint_ip=st.sampled_from(["10.244.1.168", "10.244.2.74"]),
    endpoint_port=st.integers(0, 65535), ct_id=U32, zone=st.integers(0, 65535),
    source=st.sampled_from([pb.SOURCE_NETLINK, pb.SOURCE_EBPF, pb.SOURCE_PCAP]),
    event=st.sampled_from([pb.EVENT_NEW, pb.EVENT_DESTROY, pb.EVENT_SNAPSHOT,
                           pb.EVENT_RECOVERED]),
    orig_packets=U64, orig_bytes=st.integers(0, 2**40), reply_packets=U64,
    reply_bytes=st.integers(0, 2**40), duration_ns=st.integers(0, 2**62)), max_size=40)


def as_columns(rows: list[DecisionRow], seq: int = 1) -> pb.Batch:
    return pb.Batch(agent_id="a", boot_id="b", seq=seq, node="k8s-node2", columns=pack(rows))


@given(ROWS)
def test_packing_loses_nothing(rows: list[DecisionRow]) -> None:
    b = pb.Batch.FromString(as_columns(rows).SerializeToString())
    assert unpack(b) == rows and count(b) == check(b.columns) == len(rows)
    assert len(b.columns.keys) == len({(r.protocol, r.vip, r.vip_port, r.endpoint_ip,
                                        r.endpoint_port, r.source, r.event) for r in rows})


@given(ROWS)
def test_metrics_count_what_the_rows_hold(rows: list[DecisionRow]) -> None:
    def key(r: DecisionRow) -> tuple[Any, ...]:
        return (r.vip, r.vip_port, r.protocol, r.endpoint_ip, r.endpoint_port, r.source,
                r.event)

    tally, closed, newest = per_key(as_columns(rows))
    assert tally == Counter(key(r) for r in rows)
    want: dict[tuple[Any, ...], int] = {}
    for r in rows:
        if r.event == pb.EVENT_DESTROY:
            want[key(r)] = want.get(key(r), 0) + r.orig_bytes + r.reply_bytes
    assert closed == want and newest == max((r.time_ns for r in rows), default=0)


def stored(path: Path) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in sqlite_utils.Database(path).execute(
        "SELECT time_ns, node, protocol, client_ip, client_port, vip, vip_port, endpoint, "
        "ct_id, zone, source, event, orig_packets, orig_bytes, reply_packets, reply_bytes, "
        "duration_ns, sample_rate, rules_hash FROM decisions ORDER BY time_ns, ct_id")]


def test_the_store_keeps_every_column(tmp_path: Path) -> None:
    rules = [pb.RuleSnapshot(time_ns=t, mode="iptables", hash=h) for t, h in ((10, "h1"),
                                                                              (20, "h2"))]
    eps = ("10.244.1.168", "10.244.2.74")
    rows = [DecisionRow(t, "tcp", "10.244.1.169", 40000 + t, "10.1.122.241", 9999,
                        eps[t % 2], 80, ct_id=t, source=pb.SOURCE_EBPF,
                        event=pb.EVENT_DESTROY if t % 3 == 0 else pb.EVENT_NEW,
                        orig_bytes=t * 10, reply_bytes=t, duration_ns=t * 1000)
            for t in range(1, 31)]
    s = SqliteStore(str(tmp_path / "db"))
    first = as_columns(rows[:5], seq=1)  # within the first rules version
    first.rules.extend(rules[:1])
    s.ingest(first)
    later = as_columns(rows[5:], seq=2)  # decisions on both sides of a rules change
    later.rules.extend(rules[1:])
    later.sample_rate = 4
    s.ingest(later)
    s.close()
    want = [(r.time_ns, "k8s-node2", r.protocol, r.client_ip, r.client_port, r.vip,
             r.vip_port, f"{r.endpoint_ip}:{r.endpoint_port}", r.ct_id, r.zone, "ebpf",
             "destroy" if r.event == pb.EVENT_DESTROY else "new", r.orig_packets,
             r.orig_bytes, r.reply_packets, r.reply_bytes, r.duration_ns,
             1 if r.time_ns <= 5 else 4, "h1" if r.time_ns < 20 else "h2") for r in rows]
    assert stored(tmp_path / "db") == want


def misaligned() -> list[tuple[pb.Batch, bool]]:
    """Bad batches, and whether the columns' own check catches them (a bad port or an
    empty endpoint lines up, and is the store's to refuse)."""
    good = as_columns([DecisionRow(1, "tcp", "10.0.0.1", 1, "10.1.0.1", 80, "10.2.0.1", 80,
                                   source=pb.SOURCE_NETLINK, event=pb.EVENT_NEW)] * 3)
    out = []
    for edit, by_check in ((lambda c: c.client_ip.append("x"), True),
                           (lambda c: c.key_index.__setitem__(1, 5), True),
                           (lambda c: c.orig_bytes.extend([1, 2]), True),
                           (lambda c: c.client_port.__setitem__(0, 70000), False),
                           (lambda c: c.keys[0].__setattr__("endpoint_ip", ""), False)):
        b = pb.Batch()
        b.CopyFrom(good)
        edit(b.columns)
        out.append((b, by_check))
    return out


@pytest.mark.parametrize(("bad", "by_check"), misaligned())
def test_columns_that_do_not_line_up_are_refused_whole(tmp_path: Path, bad: pb.Batch,
                                                       by_check: bool) -> None:
    if by_check:
        with pytest.raises(ColumnsError):
            check(bad.columns)
    else:
        assert check(bad.columns) == 3
    s = SqliteStore(str(tmp_path / "db"))
    with pytest.raises(BatchRejected):
        s.ingest(bad)
    s.close()
    assert sqlite_utils.Database(tmp_path / "db")["batches"].count == 0


def test_the_names_of_sources_and_events_are_the_wire_enums() -> None:
    from natlens.proto.names import EVENTS, SOURCES

    assert {pb.Source.Name(k): v for k, v in SOURCES.items()} == {
        f"SOURCE_{v.upper()}": v for v in SOURCES.values()}
    assert {pb.Event.Name(k): v for k, v in EVENTS.items()} == {
        f"EVENT_{v.upper()}": v for v in EVENTS.values()}
    assert set(pb.Source.values()) - {0} == set(SOURCES)
    assert set(pb.Event.values()) - {0} == set(EVENTS)
