"""The kernel program itself: loaded through bcc, run by the kernel (BPF_PROG_TEST_RUN)
on messages the kernel sent and on messages made from them (tests/ctmsg.py), checked
against the Python decoder."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natlens.agent.decode import ctnetlink as c
from natlens.agent.decode.counters import CounterKey, CounterValue
from natlens.agent.decode.ctnetlink import CtEvent, Tuple
from natlens.agent.decode.decision import to_decision
from natlens.agent.sources.ebpf_filter import EbpfFilter
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow
from tests import ctmsg
from tests.ctmsg import message

from .bpf_run import test_run as run

pytestmark = pytest.mark.privileged

V4_ORIG = ("10.244.1.169", "10.1.122.241", 6, 40000, 9999)
V4_REPLY = ("10.244.2.74", "10.244.1.169", 6, 80, 40000)


@pytest.fixture(scope="module")
def bpffs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("bpffs")
    subprocess.run(["mount", "-t", "bpf", "bpf", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


RECORDS: list[DecisionRow] = []  # decoded from the ring


@pytest.fixture(scope="module")
def loaded(bpffs: Path) -> Iterator[EbpfFilter]:
    f = EbpfFilter(str(bpffs / "node"), decisions=True)
    f.open_decisions(RECORDS.append)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def filt(loaded: EbpfFilter) -> EbpfFilter:
    loaded.counters.clear()
    loaded.stats_map.clear()
    loaded.configure(decisions=True)
    loaded.poll(0)
    RECORDS.clear()
    return loaded


def records(f: EbpfFilter) -> list[DecisionRow]:
    f.poll(0)
    out = list(RECORDS)
    RECORDS.clear()
    return out


def expect(ev: CtEvent, got: DecisionRow) -> DecisionRow:
    """The row the netlink source makes of ``ev``, at ``got``'s time when the event has
    no timestamps (then both use the time the record was read)."""
    event = pb.EVENT_DESTROY if ev.kind == "destroy" else pb.EVENT_NEW
    return to_decision(ev, event, pb.SOURCE_EBPF, got.time_ns)


@pytest.mark.parametrize("name", sorted(ctmsg.captured()))
def test_the_kernels_own_messages(filt: EbpfFilter, name: str) -> None:
    """Every captured event (TCP, UDP, SCTP; IPv4, IPv6; with and without a zone) makes
    the record the Python decoder makes of it, which tests/unit/test_ctnetlink.py holds
    to what conntrack(8) read."""
    data = ctmsg.captured()[name].data
    (ev,) = c.messages(data)
    assert isinstance(ev, CtEvent)
    assert run(filt.fn.fd, data) == 0
    (r,) = records(filt)
    assert r == expect(ev, r)


def test_dnat_new_event_is_counted_and_passed(filt: EbpfFilter) -> None:
    m = message("new", V4_ORIG, V4_REPLY, 7)
    assert run(filt.fn.fd, m) == 0  # nothing for the socket: the record goes to the ring
    (r,) = records(filt)
    assert r == expect(CtEvent("new", Tuple(*V4_ORIG), Tuple(*V4_REPLY), 7, 0), r)
    assert abs(r.time_ns - time.time_ns()) < 5e9  # the boot clock made wall-clock time
    assert filt.read_counters() == {
        CounterKey("tcp", "10.1.122.241", 9999, "10.244.2.74", 80): CounterValue(connections=1)}
    assert filt.read_stats()["passed"] == 1
    assert filt.seen_checker()(0, 7, 0)


def test_aggregate_mode_copies_nothing(filt: EbpfFilter) -> None:
    filt.configure(decisions=False)
    assert run(filt.fn.fd, message("new", V4_ORIG, V4_REPLY, 8)) == 0
    assert records(filt) == []
    assert sum(v.connections for v in filt.read_counters().values()) == 1


def test_event_without_dnat_is_dropped_and_not_counted(filt: EbpfFilter) -> None:
    orig = ("10.244.1.169", "10.244.1.168", 6, 40001, 80)
    reply = ("10.244.1.168", "10.244.1.169", 6, 80, 40001)
    assert run(filt.fn.fd, message("new", orig, reply, 9)) == 0
    assert records(filt) == [] and filt.read_counters() == {}
    assert filt.read_stats()["non_dnat"] == 1


@pytest.mark.parametrize("proto,name", [(6, "tcp"), (17, "udp"), (132, "sctp")])
def test_ipv6_and_every_protocol(filt: EbpfFilter, proto: int, name: str) -> None:
    orig = ("fd00:10:244:1::169", "fd00:10:96::a", proto, 40000, 53)
    reply = ("fd00:10:244:2::74", "fd00:10:244:1::169", proto, 5353, 40000)
    run(filt.fn.fd, message("new", orig, reply, 11, zone=3))
    (r,) = records(filt)
    assert r == expect(CtEvent("new", Tuple(*orig), Tuple(*reply), 11, 3), r)
    assert filt.read_counters() == {
        CounterKey(name, "fd00:10:96::a", 53, "fd00:10:244:2::74", 5353):
            CounterValue(connections=1)}
    assert filt.seen_checker()(3, 11, 0) and not filt.seen_checker()(0, 11, 0)


def test_destroy_adds_bytes_packets_and_duration(filt: EbpfFilter) -> None:
    run(filt.fn.fd, message("new", V4_ORIG, V4_REPLY, 12))
    run(filt.fn.fd, message("destroy", V4_ORIG, V4_REPLY, 12, counters=(3, 180, 2, 320),
                            ts=(1_000_000_000, 1_250_000_000)))
    new, end = records(filt)
    assert (new.event, end.event) == (pb.EVENT_NEW, pb.EVENT_DESTROY)
    assert (end.orig_packets, end.orig_bytes, end.reply_packets, end.reply_bytes,
            end.time_ns, end.duration_ns) == (3, 180, 2, 320, 1_000_000_000, 250_000_000)
    (v,) = filt.read_counters().values()
    assert v == CounterValue(1, 1, 3, 180, 2, 320, 250_000_000)
    assert not filt.seen_checker()(0, 12, 0)  # ended: no longer in the seen set


def test_malformed_attribute_is_counted(filt: EbpfFilter) -> None:
    m = bytearray(message("new", V4_ORIG, V4_REPLY, 13))
    m[20:22] = (2).to_bytes(2, "little")  # first attribute claims a length below its header
    assert run(filt.fn.fd, bytes(m)) == 0
    assert filt.read_stats()["malformed"] == 1 and filt.read_counters() == {}
    assert records(filt) == []


def test_sampling_keeps_one_in_n_and_is_stable_per_connection(filt: EbpfFilter) -> None:
    n, rate = 20_000, 10
    filt.configure(decisions=True, sample=rate, seed=12345)
    for i in range(n):
        orig = (f"10.244.{1 + i // 60000}.169", "10.1.122.241", 6, 1024 + i % 60000, 9999)
        reply = ("10.244.2.74", orig[0], 6, 80, orig[3])
        run(filt.fn.fd, message("new", orig, reply, i))
    passed = {(r.client_ip, r.client_port) for r in records(filt)}
    expected, sd = n / rate, (n * (1 / rate) * (1 - 1 / rate)) ** 0.5
    assert abs(len(passed) - expected) < 4 * sd
    # The same connection's DESTROY is selected exactly when its NEW was.
    for i in range(200):
        orig = ("10.244.1.169", "10.1.122.241", 6, 1024 + i, 9999)
        reply = ("10.244.2.74", orig[0], 6, 80, orig[3])
        run(filt.fn.fd, message("destroy", orig, reply, i))
        assert bool(records(filt)) == ((orig[0], orig[3]) in passed)
    stats = filt.read_stats()
    assert stats["sampled_out"] + stats["passed"] == n + 200
    assert sum(v.connections for v in filt.read_counters().values()) == n  # counts stay exact


addr4 = st.ip_addresses(v=4).map(str)
port = st.integers(1, 65535)
proto = st.sampled_from([6, 17, 132])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(src=addr4, vip=addr4, ep=addr4, pr=proto, sport=port, vport=port, eport=port,
       kind=st.sampled_from(["new", "destroy"]))
def test_kernel_and_python_agree_on_what_is_a_dnat_decision(
        filt: EbpfFilter, src: str, vip: str, ep: str, pr: int, sport: int, vport: int,
        eport: int, kind: str) -> None:
    m = message(kind, (src, vip, pr, sport, vport), (ep, src, pr, eport, sport), 1)
    (ev,) = list(c.messages(m))
    assert isinstance(ev, c.CtEvent)
    run(filt.fn.fd, m)
    got = records(filt)
    assert bool(got) == ev.is_dnat
    if got:  # the kernel's parse and the Python decoder's: the same event, every field
        assert got == [expect(ev, got[0])]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), cut=st.integers(0, 399))
def test_garbage_and_truncated_messages_are_dropped(filt: EbpfFilter, data: bytes,
                                                   cut: int) -> None:
    full = message("new", V4_ORIG, V4_REPLY, 5)
    counted = sum(v.connections for v in filt.read_counters().values())
    assert run(filt.fn.fd, full[:min(cut, len(full) - 1)]) == 0
    assert sum(v.connections for v in filt.read_counters().values()) == counted
    assert records(filt) == []
    assert run(filt.fn.fd, data) == 0  # the socket never gets anything


def test_a_full_counter_map_is_counted_not_silent(bpffs: Path) -> None:
    small = EbpfFilter(str(bpffs / "small"), max_keys=2)
    try:
        for i in range(3):  # three endpoints, room for two keys
            reply = (f"10.244.2.{i + 1}", "10.244.1.169", 6, 80, 40000)
            run(small.fn.fd, message("new", V4_ORIG, reply, 100 + i))
        assert len(small.read_counters()) == 2
        assert small.read_stats()["map_full"] == 1
    finally:
        small.close()


def _flow(i: int) -> bytes:
    """A NEW DNAT event of client port ``1000 + i``, conntrack id ``i``."""
    return message("new", (V4_ORIG[0], V4_ORIG[1], 6, 1000 + i, 9999),
                   (V4_REPLY[0], V4_REPLY[1], 6, 80, 1000 + i), i)


def test_the_ring_wraps_around_and_a_full_ring_is_counted(bpffs: Path) -> None:
    """A one-page ring holds 25 records of 160 bytes, so records straddle its end; what
    does not fit is counted (``ring_full``), exactly."""
    f = EbpfFilter(str(bpffs / "ring"), decisions=True, ring_pages=1)
    rows: list[DecisionRow] = []
    f.open_decisions(rows.append)
    try:
        for i in range(100):  # four times around, read every 10
            run(f.fn.fd, _flow(i))
            if i % 10 == 9:
                f.poll(0)
        assert [r.ct_id for r in rows] == list(range(100))
        assert rows[-1] == expect(CtEvent("new", Tuple(*V4_ORIG[:3], 1099, 9999),
                                          Tuple(*V4_REPLY[:4], 1099), 99, 0), rows[-1])
        rows.clear()
        for i in range(200, 240):  # more than fit, unread
            run(f.fn.fd, _flow(i))
        f.poll(0)
        assert 0 < f.read_stats()["ring_full"] == 40 - len(rows)
        assert [r.ct_id for r in rows] == list(range(200, 200 + len(rows)))
    finally:
        f.close()
