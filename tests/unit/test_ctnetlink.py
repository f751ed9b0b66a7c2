"""The ctnetlink decoder against messages the kernel sent (tests/fixtures/ctnetlink,
read beside by conntrack(8)), messages made from them (tests/ctmsg.py), and fuzzed."""

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.decode import ctnetlink as c
from tests import ctmsg
from tests.ctmsg import message

SEED_ORIG = ("10.244.1.169", "10.1.122.241", 6, 40000, 9999)
SEED_REPLY = ("10.244.2.74", "10.244.1.169", 6, 80, 40000)


@pytest.mark.parametrize("name", sorted(ctmsg.captured()))
def test_the_kernels_messages_decode_to_what_conntrack_read(name: str) -> None:
    """Each field as libnetfilter_conntrack read the same message from the kernel."""
    cap = ctmsg.captured()[name]
    o, r = cap.said["orig"], cap.said["reply"]
    (ev,) = c.messages(cap.data)
    assert isinstance(ev, c.CtEvent)
    assert ev.kind == cap.said["kind"] and ev.is_dnat
    assert ev.orig == c.Tuple(str(ipaddress.ip_address(o["src"])),
                              str(ipaddress.ip_address(o["dst"])), o["proto"], o["sport"],
                              o["dport"])
    assert ev.reply == c.Tuple(str(ipaddress.ip_address(r["src"])),
                               str(ipaddress.ip_address(r["dst"])), r["proto"], r["sport"],
                               r["dport"])
    assert (ev.ct_id, ev.zone) == (cap.said["id"], cap.said["zone"])
    if ev.kind == "destroy":
        assert (ev.orig_packets, ev.orig_bytes, ev.reply_packets, ev.reply_bytes) == (
            o["packets"], o["bytes"], r["packets"], r["bytes"])
        lo, hi = ctmsg.window()
        assert lo <= ev.start_ns <= ev.stop_ns <= hi
        assert (ev.stop_ns - ev.start_ns) // 10**9 == cap.said["deltatime_s"]
    else:
        assert (ev.orig_packets, ev.orig_bytes, ev.start_ns, ev.stop_ns) == (0, 0, 0, 0)
    # the agent's path reads the same
    (vals,) = c.event_messages(cap.data)
    assert isinstance(vals, tuple) and c.values_dnat(vals)
    assert (vals[8], vals[9], vals[3]) == (ev.ct_id, ev.zone, ev.orig.proto)


def test_seed_new_event_is_a_dnat_decision() -> None:
    (ev,) = list(c.messages(message("new", SEED_ORIG, SEED_REPLY, 77)))
    assert isinstance(ev, c.CtEvent)
    assert ev.kind == "new" and ev.is_dnat and ev.ct_id == 77
    assert (ev.orig.dst, ev.orig.dport, ev.reply.src, ev.reply.sport) == (
        "10.1.122.241", 9999, "10.244.2.74", 80)


def test_destroy_carries_counters_and_times() -> None:
    buf = message("destroy", SEED_ORIG, SEED_REPLY, 5, (6, 400, 5, 900), (10**18, 10**18 + 5))
    (ev,) = list(c.messages(buf))
    assert isinstance(ev, c.CtEvent)
    assert (ev.kind, ev.orig_packets, ev.orig_bytes, ev.reply_packets, ev.reply_bytes) == (
        "destroy", 6, 400, 5, 900)
    assert ev.stop_ns - ev.start_ns == 5


def test_no_dnat_when_reply_comes_from_the_destination() -> None:
    orig = ("10.244.1.169", "10.244.2.74", 6, 40000, 80)
    (ev,) = list(c.messages(message("new", orig, ("10.244.2.74", "10.244.1.169", 6, 80, 40000), 1)))
    assert isinstance(ev, c.CtEvent) and not ev.is_dnat


ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@given(st.one_of(st.tuples(v4, v4, v4), st.tuples(v6, v6, v6)), ports, ports, ports,
       st.integers(0, 2**32 - 1), st.sampled_from([6, 17, 132]),
       st.lists(st.integers(0, 2**63), min_size=4, max_size=4))
def test_round_trip(ips: tuple, sport: int, vport: int, eport: int, ct_id: int, proto: int,
                    counters: list[int]) -> None:
    client, vip, ep = ips
    orig = (client, vip, proto, sport, vport)
    reply = (ep, client, proto, eport, sport)
    buf = message("new", orig, reply, ct_id) + message("destroy", orig, reply, ct_id,
                                                        tuple(counters))
    new, gone = list(c.messages(buf))
    for ev in (new, gone):
        assert isinstance(ev, c.CtEvent)
        got = [ipaddress.ip_address(x) for x in (ev.orig.src, ev.orig.dst, ev.reply.src)]
        assert got == [ipaddress.ip_address(x) for x in (client, vip, ep)]
        assert (ev.orig.sport, ev.orig.dport, ev.reply.sport, ev.ct_id) == (sport, vport, eport,
                                                                            ct_id)
    assert isinstance(gone, c.CtEvent)
    assert [gone.orig_packets, gone.orig_bytes, gone.reply_packets, gone.reply_bytes] == counters


def well_formed(out: list[c.CtEvent | c.Done | c.NetlinkError]) -> None:
    """What the decoder hands on is always in range, whatever it was given."""
    for ev in out:
        if isinstance(ev, c.NetlinkError):
            assert -(2**31) <= ev.errno <= 2**31
        if not isinstance(ev, c.CtEvent):
            continue
        assert ev.kind in ("new", "update", "destroy")
        for t in (ev.orig, ev.reply):
            ipaddress.ip_address(t.src)
            ipaddress.ip_address(t.dst)
            assert 0 <= t.proto < 256 and 0 <= t.sport < 65536 and 0 <= t.dport < 65536
        assert 0 <= ev.ct_id < 2**32 and 0 <= ev.zone < 2**16
        assert all(0 <= v < 2**64 for v in (ev.orig_packets, ev.orig_bytes, ev.reply_packets,
                                             ev.reply_bytes, ev.start_ns, ev.stop_ns))


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_decode_in_range_or_fail_cleanly(buf: bytes) -> None:
    with contextlib.suppress(c.DecodeError):
        well_formed(c.messages(buf))


@settings(max_examples=300)
@given(st.sampled_from(sorted(ctmsg.captured())), st.integers(0, 400),
       st.binary(min_size=1, max_size=8))
def test_corrupted_kernel_messages_fail_cleanly(name: str, pos: int, junk: bytes) -> None:
    """Corrupted anywhere past the netlink header: an error, or one event in range."""
    data = ctmsg.captured()[name].data
    buf = bytearray(data)
    pos = 16 + pos % (len(buf) - 16)
    buf[pos:pos + len(junk)] = junk
    buf = buf[:len(data)]
    try:
        out = c.messages(bytes(buf))
    except c.DecodeError:
        return
    well_formed(out)
    assert len(out) == 1


def test_truncated_message_is_an_error() -> None:
    with pytest.raises(c.DecodeError):
        list(c.messages(message("new", SEED_ORIG, SEED_REPLY, 9)[:-7]))


def test_dump_request_layout() -> None:
    req = c.dump_request(42)
    length, typ, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, typ, flags & c.NLM_F_DUMP, seq) == (20, 0x101, c.NLM_F_DUMP, 42)


def test_addresses_of_the_two_families_never_share_a_cached_name() -> None:
    """IPv4 10.1.2.3 and IPv6 a01:203:: begin with the same four bytes."""
    v4 = c.address(bytes([10, 1, 2, 3]))
    v6 = c.address(bytes([10, 1, 2, 3]) + bytes(12))
    assert (v4, v6, c.address(bytes([10, 1, 2, 3]))) == ("10.1.2.3", "a01:203::", "10.1.2.3")


def _decoded(buf: bytes) -> list[object] | type[Exception]:
    try:
        return list(c.messages(buf))
    except c.DecodeError as e:
        return type(e)


@settings(max_examples=300)
@given(st.one_of(st.tuples(v4, v4, v4), st.tuples(v6, v6, v6)), ports, ports,
       st.sampled_from([6, 17, 132]), st.sampled_from(["new", "destroy"]),
       st.one_of(st.none(), st.integers(0, 65535)), st.integers(0, 400),
       st.binary(min_size=1, max_size=4))
def test_a_cached_layout_reads_what_a_fresh_walk_reads(
        ips: tuple[str, str, str], sport: int, eport: int, proto: int, kind: str,
        zone: int | None, pos: int, junk: bytes) -> None:
    """After one message planned the layout of its (length, type), another of the same
    key, corrupted anywhere (headers or values), decodes as if planned afresh: the
    checked headers catch every change of shape the walk would see."""
    client, vip, ep = ips
    orig, reply = (client, vip, proto, sport, 9999), (ep, client, proto, eport, sport)
    first = message(kind, orig, reply, 7, (1, 2, 3, 4), (5, 6), zone=zone)
    other = bytearray(message(kind, orig, reply, 8, (9, 8, 7, 6), (5, 9), zone=zone))
    pos = 16 + pos % (len(other) - 16)  # the body: the netlink header keeps the key
    other[pos:pos + len(junk)] = junk
    other = other[:len(first)]
    c._LAYOUTS.clear()
    fresh = _decoded(bytes(other))
    c._LAYOUTS.clear()
    assert _decoded(first) != c.DecodeError
    assert _decoded(bytes(other)) == fresh


def test_same_length_other_order_is_planned_again() -> None:
    """Messages of one length and type whose attributes come in other orders (the
    kernel's, its last attribute moved to the front, its third moved to the end)."""
    a = message("new", SEED_ORIG, SEED_REPLY, 41, zone=3)
    n = len(list(ctmsg.attributes(a)))
    b = ctmsg.reordered(a, [n - 1, *range(n - 1)])
    d = ctmsg.reordered(a, [i for i in range(n) if i != 2] + [2])
    assert len(a) == len(b) == len(d) and len({a, b, d}) == 3
    c._LAYOUTS.clear()
    for buf in (a, b, a, d, b):
        (ev,) = c.messages(buf)
        assert isinstance(ev, c.CtEvent)
        assert (ev.ct_id, ev.zone, ev.orig, ev.reply) == (41, 3, c.Tuple(*SEED_ORIG),
                                                           c.Tuple(*SEED_REPLY))


@settings(max_examples=300)
@given(st.one_of(st.tuples(v4, v4, v4), st.tuples(v6, v6, v6)), ports, ports,
       st.sampled_from([6, 17, 132]), st.sampled_from(["new", "destroy"]),
       st.one_of(st.none(), st.integers(0, 65535)), st.integers(0, 2**32 - 1),
       st.tuples(*[st.integers(0, 2**64 - 1)] * 4),
       st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)), st.booleans())
def test_the_netlink_source_rows_are_the_events_rows(
        ips: tuple[str, str, str], sport: int, eport: int, proto: int, kind: str,
        zone: int | None, ct_id: int, counters: tuple[int, int, int, int],
        ts: tuple[int, int], not_nat: bool) -> None:
    """``event_values`` + ``from_values`` (the agent's netlink path, no event built)
    give the row ``decode_ct`` + ``to_decision`` give, for NEW and DESTROY alike."""
    from natlens.agent.decode.decision import from_values, to_decision
    from natlens.proto import natlens_pb2 as pb

    client, vip, ep = ips
    if not_nat:  # the reply comes from the address and port the client asked for
        ep, eport = vip, 9999
    buf = message(kind, (client, vip, proto, sport, 9999), (ep, client, proto, eport, sport),
                  ct_id, counters, ts, zone=zone)
    (ev,) = c.messages(buf)
    (vals,) = c.event_messages(buf)
    assert isinstance(ev, c.CtEvent) and isinstance(vals, tuple)
    assert vals[0] == ev.kind
    event = pb.EVENT_DESTROY if kind == "destroy" else pb.EVENT_NEW
    assert (from_values(vals, event, pb.SOURCE_NETLINK, 123)
            == to_decision(ev, event, pb.SOURCE_NETLINK, 123))
    # the agent's DNAT test on raw values (odst, odport) != (rsrc, rsport)
    assert (vals[2] != vals[6] or vals[5] != vals[7]) == ev.is_dnat
