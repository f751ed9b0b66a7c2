"""Ring records of the hook program, decoded in bulk; the conntrack clash total."""

from __future__ import annotations

import ipaddress
import socket
import struct

import numpy
from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.decode.hook_record import (
    BUSY,
    ENTRY,
    RECORD_SIZE,
    Addresses,
    chunk,
    complete,
)
from natlens.agent.sources.hook_loader import clash_total
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack_parts, unpack

# struct hook_rec after the ring's header (len, pgoff), as hook.bpf.c lays it out.
REC = struct.Struct("<IIQBBH2s2s2sBB16s16s16sI5Q")
assert REC.size == ENTRY.itemsize


def entry(boot: int, family: int, proto: int, zone: int, src: str, sport: int, dst: str,
          dport: int, ep: str, eport: int, ct_id: int, length: int = RECORD_SIZE,
          kind: int = 0, counters: tuple[int, ...] = (0, 0, 0, 0, 0)) -> bytes:
    def raw(a: str) -> bytes:
        return ipaddress.ip_address(a).packed.ljust(16, b"\0")

    return REC.pack(length, 0, boot, family, proto, zone, sport.to_bytes(2, "big"),
                    dport.to_bytes(2, "big"), eport.to_bytes(2, "big"), kind, 4, raw(src),
                    raw(dst), raw(ep), ct_id, *counters)


def rows(arr: numpy.ndarray, offset_ns: int) -> list[DecisionRow]:
    """The source's path: entries to wire columns, packed into a batch, read back."""
    batch = pb.Batch()
    batch.columns.CopyFrom(pack_parts([chunk(arr, offset_ns, Addresses())]))
    return unpack(batch)


v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
port = st.integers(0, 65535)


@given(st.lists(st.tuples(st.booleans(), port, port, port, st.integers(0, 2**32 - 1),
                          st.integers(0, 65535), st.sampled_from([6, 17, 132]),
                          st.data()), min_size=1, max_size=20))
def test_records_decode_to_the_rows_they_carry(recs: list) -> None:  # type: ignore[type-arg]
    data, want = b"", []
    for six, sport, dport, eport, ct_id, zone, proto, draw in recs:
        addrs = [draw.draw(v6 if six else v4) for _ in range(3)]
        fam = socket.AF_INET6 if six else socket.AF_INET
        data += entry(1000, fam, proto, zone, addrs[0], sport, addrs[1], dport, addrs[2],
                      eport, ct_id)
        name = {6: "tcp", 17: "udp", 132: "sctp"}[proto]
        text = [socket.inet_ntop(fam, ipaddress.ip_address(a).packed) for a in addrs]
        want.append((1000 + 5, name, text[0], sport, text[1], dport, text[2], eport, ct_id,
                     zone, pb.SOURCE_EBPF, pb.EVENT_NEW))
    arr = numpy.frombuffer(data, dtype=ENTRY)
    assert complete(arr) == len(recs)
    assert [tuple(r)[:12] for r in rows(arr, 5)] == want


def test_a_record_still_being_written_ends_the_take() -> None:
    one = entry(1, 2, 6, 0, "10.0.0.1", 1, "10.96.0.1", 80, "10.244.0.5", 8080, 7)
    busy = entry(2, 2, 6, 0, "10.0.0.1", 2, "10.96.0.1", 80, "10.244.0.5", 8080, 8,
                 length=RECORD_SIZE | BUSY)
    arr = numpy.frombuffer(one + busy + one, dtype=ENTRY)
    assert complete(arr) == 1
    (row,) = rows(arr[:1], 0)
    assert (row.client_ip, row.vip, row.endpoint_ip, row.endpoint_port) == (
        "10.0.0.1", "10.96.0.1", "10.244.0.5", 8080)


def test_a_close_becomes_a_destroy_row_dated_at_its_start() -> None:
    close = entry(10_000, 2, 17, 3, "10.0.0.1", 5353, "10.96.0.10", 53, "10.244.0.9", 53, 42,
                  kind=1, counters=(1, 60, 1, 120, 4_000))
    (row,) = rows(numpy.frombuffer(close, dtype=ENTRY), 100)
    assert row.event == pb.EVENT_DESTROY and row.time_ns == 10_000 + 100 - 4_000
    assert (row.ct_id, row.zone, row.protocol) == (42, 3, "udp")
    assert (row.orig_packets, row.orig_bytes, row.reply_packets, row.reply_bytes,
            row.duration_ns) == (1, 60, 1, 120, 4_000)


def test_clash_total_sums_clash_resolve_and_insert_failed_over_cpus() -> None:
    text = ("entries  clashres found new invalid ignore delete chainlength insert "
            "insert_failed drop early_drop icmp_error  expect_new expect_create "
            "expect_delete search_restart\n"
            "00000003  00000002 00000000 00000000 00000000 00000000 00000000 00000000 "
            "00000000 00000001 00000005 00000000 00000000  00000000 00000000 00000000 "
            "00000000\n"
            "00000003  0000000a 00000000 00000000 00000000 00000000 00000000 00000000 "
            "00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 "
            "00000000\n")
    assert clash_total(text) == 2 + 1 + 10
