"""The hook programs' ring records (struct hook_rec in hook.bpf.c) become decision rows.

Records are decoded in bulk: a span of the ring is one numpy array of fixed-size
entries (the ring's 8-byte header, then the 80-byte record), so a poll costs one
``tolist`` and one row per connection, not a Python call per field."""

from __future__ import annotations

import socket

import numpy

from natlens.agent.decode.ctnetlink import PROTOCOLS, address
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow

RECORD_SIZE = 112
BUSY = 1 << 31
DISCARD = 1 << 30
# The ring's header (len with flag bits, page offset), then struct hook_rec.
ENTRY = numpy.dtype([
    ("len", "<u4"), ("pgoff", "<u4"),
    ("boot_ns", "<u8"), ("family", "u1"), ("proto", "u1"), ("zone", "<u2"),
    ("sport", ">u2"), ("dport", ">u2"), ("ep_port", ">u2"), ("kind", "u1"), ("hook", "u1"),
    ("src", "V16"), ("dst", "V16"), ("ep", "V16"), ("ct_id", "<u4"),
    ("orig_packets", "<u8"), ("orig_bytes", "<u8"), ("reply_packets", "<u8"),
    ("reply_bytes", "<u8"), ("duration_ns", "<u8")])
assert ENTRY.itemsize == 8 + RECORD_SIZE


class Addresses(dict[tuple[int, bytes], str]):
    """Text of 16-byte address fields, remembered: a node meets few addresses."""

    def __missing__(self, key: tuple[int, bytes]) -> str:
        family, raw = key
        text = address(raw if family == socket.AF_INET6 else raw[:4])
        if len(self) < 1 << 16:
            self[key] = text
        return text


def complete(entries: numpy.ndarray) -> int:
    """How many leading entries are whole records the program has submitted: stop at
    the first one still being written (busy) or not of this program's size."""
    lengths = entries["len"]
    bad = numpy.flatnonzero(lengths != RECORD_SIZE)
    return int(bad[0]) if bad.size else len(entries)


def rows(entries: numpy.ndarray, offset_ns: int, names: Addresses,
         source: pb.Source = pb.SOURCE_EBPF) -> list[DecisionRow]:
    """Decision rows of whole entries: a decision (kind 0) as ``new``, a close (kind 1)
    as ``destroy`` with its counters, its time the connection's start as for every
    source's DESTROY rows, and the id its decision had. ``offset_ns`` turns the boot
    clock into wall-clock time."""
    out = []
    new, destroy = pb.EVENT_NEW, pb.EVENT_DESTROY
    proto_names = PROTOCOLS
    for (_, _, boot, fam, proto, zone, sport, dport, eport, kind, _, src, dst, ep, ct_id,
         opk, oby, rpk, rby, dur) in entries.tolist():
        if kind:
            out.append(DecisionRow(boot + offset_ns - dur, proto_names.get(proto) or str(proto),
                                   names[fam, src], sport, names[fam, dst], dport,
                                   names[fam, ep], eport, ct_id, zone, source, destroy, opk,
                                   oby, rpk, rby, dur))
        else:
            out.append(DecisionRow(boot + offset_ns, proto_names.get(proto) or str(proto),
                                   names[fam, src], sport, names[fam, dst], dport,
                                   names[fam, ep], eport, ct_id, zone, source, new))
    return out
