"""The hook programs' ring records (struct hook_rec in hook.bpf.c) become decision rows.

Records are decoded in bulk: a span of the ring is one numpy array of fixed-size
entries (the ring's 8-byte header, then the 112-byte record), turned column by column
into the wire's columns, not a Python call per field or an object per record."""

from __future__ import annotations

import socket

import numpy

from natlens.agent.decode.ctnetlink import PROTOCOLS, address
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import ROW_COLUMNS, Chunk

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


_ADDR = numpy.dtype([("family", "u1"), ("addr", "V16")])


def texts(column: numpy.ndarray, family: numpy.ndarray, names: Addresses) -> list[str]:
    """A 16-byte address column as text, each distinct (family, address) formatted
    once: numpy finds the distinct ones (a node meets few VIPs and endpoints, and
    clients repeat)."""
    k = numpy.empty(len(column), dtype=_ADDR)
    k["family"], k["addr"] = family, column
    uniq, inverse = numpy.unique(k.view(f"V{_ADDR.itemsize}"), return_inverse=True)
    strs = numpy.array([names[int(u["family"]), u["addr"].tobytes()]
                        for u in uniq.view(_ADDR)], dtype=object)
    return strs[inverse.ravel()].tolist()  # type: ignore[no-any-return]


# What makes a decision key (proto/columns.py: KEY_FIELDS), packed, to find the
# distinct keys of a take with one numpy.unique.
_KEY = numpy.dtype([("family", "u1"), ("proto", "u1"), ("kind", "u1"), ("dport", ">u2"),
                    ("ep_port", ">u2"), ("dst", "V16"), ("ep", "V16")])
_EVENTS = (pb.EVENT_NEW, pb.EVENT_DESTROY)


def _times(entries: numpy.ndarray, offset_ns: int) -> tuple[list[int], numpy.ndarray]:
    """Wall-clock times (a close's is its connection's start) and the durations."""
    duration = entries["duration_ns"].astype(numpy.int64)
    times = (entries["boot_ns"].astype(numpy.int64) + offset_ns
             - numpy.where(entries["kind"] == 1, duration, 0))
    return times.tolist(), duration


def chunk(entries: numpy.ndarray, offset_ns: int, names: Addresses,
          source: pb.Source = pb.SOURCE_EBPF) -> Chunk:
    """Whole entries as wire columns, with no object per decision: the distinct keys
    found by numpy, each address formatted once (a row object per decision cost about
    3 us each, BENCHMARKS.md). A decision (kind 0) is ``new``; a close (kind 1) is
    ``destroy`` with its counters and the id its decision had, dated at the
    connection's start as every source's DESTROY rows are. ``offset_ns`` turns the boot
    clock into wall-clock time."""
    n = len(entries)
    if not n:
        return Chunk([], [], {k: [] for k in ROW_COLUMNS})
    k = numpy.empty(n, dtype=_KEY)
    for f in _KEY.names or ():
        k[f] = entries[f]
    uniq, inverse = numpy.unique(k.view(f"V{_KEY.itemsize}"), return_inverse=True)
    keys = []
    for u in uniq.view(_KEY):
        fam = socket.AF_INET6 if u["family"] == socket.AF_INET6 else socket.AF_INET
        keys.append((PROTOCOLS.get(int(u["proto"])) or str(int(u["proto"])),
                     names[fam, u["dst"].tobytes()], int(u["dport"]),
                     names[fam, u["ep"].tobytes()], int(u["ep_port"]), source,
                     _EVENTS[min(int(u["kind"]), 1)]))
    times, duration = _times(entries, offset_ns)
    return Chunk(keys, inverse.ravel().tolist(), {
        "time_ns": times, "client_ip": texts(entries["src"], entries["family"], names),
        "client_port": entries["sport"].astype(numpy.int64).tolist(),
        "ct_id": entries["ct_id"].tolist(), "zone": entries["zone"].tolist(),
        "orig_packets": entries["orig_packets"].tolist(),
        "orig_bytes": entries["orig_bytes"].tolist(),
        "reply_packets": entries["reply_packets"].tolist(),
        "reply_bytes": entries["reply_bytes"].tolist(), "duration_ns": duration.tolist()})
