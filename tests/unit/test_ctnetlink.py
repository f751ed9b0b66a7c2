"""The ctnetlink decoder against messages built to the kernel's layout, and fuzzed."""

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.decode import ctnetlink as c
from tests.ctmsg import message, tuple_attr

SEED_ORIG = ("10.244.1.169", "10.1.122.241", 6, 40000, 9999)
SEED_REPLY = ("10.244.2.74", "10.244.1.169", 6, 80, 40000)


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


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(buf: bytes) -> None:
    with contextlib.suppress(c.DecodeError):
        list(c.messages(buf))


@settings(max_examples=300)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_corrupted_real_messages_fail_cleanly(pos: int, junk: bytes) -> None:
    buf = bytearray(message("new", SEED_ORIG, SEED_REPLY, 9))
    pos %= len(buf)
    buf[pos:pos + len(junk)] = junk
    with contextlib.suppress(c.DecodeError):
        list(c.messages(bytes(buf)))


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
    """Two messages of one length and type whose attributes come in another order."""
    from tests.ctmsg import nla

    def msg(body: bytes) -> bytes:
        body = struct.pack("=BBH", 2, 0, 0) + body
        return struct.pack("=IHHII", 16 + len(body), 0x100, c.NLM_F_CREATE, 0, 0) + body

    tuples = (tuple_attr(c.CTA_TUPLE_ORIG, *SEED_ORIG) + tuple_attr(c.CTA_TUPLE_REPLY,
                                                                     *SEED_REPLY))
    ct_id, zone = nla(c.CTA_ID, struct.pack(">I", 41)), nla(c.CTA_ZONE, struct.pack(">H", 3))
    a, b = msg(tuples + ct_id + zone), msg(zone + tuples + ct_id)
    assert len(a) == len(b)
    for buf in (a, b, a):
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
