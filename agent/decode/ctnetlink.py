"""Decode ctnetlink (nfnetlink conntrack) messages into conntrack events.

Hand-written on purpose: bench/ctnetlink_decode.py measures it against pyroute2's
``nfct_msg`` decoder on the same messages (figures in BENCHMARKS.md); at flood rates the
decoder is the agent's hot path. Layouts are from linux/netfilter/nfnetlink_conntrack.h.
"""

from __future__ import annotations

import functools
import operator
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400

# enum ctattr_type
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS = 1, 2, 3
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 9, 10
CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 12, 18, 20
# enum ctattr_tuple / ctattr_ip / ctattr_l4proto / ctattr_counters / ctattr_tstamp
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}

_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


Buffer = bytes | bytearray  # a datagram copied out, or read in place (recvmmsg's slots)


class DecodeError(ValueError):
    """A netlink message that does not have the shape the kernel promises."""


class Tuple(NamedTuple):
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


class CtEvent(NamedTuple):
    """One conntrack message: an event (new/destroy) or one entry of a table dump.

    Named tuples, not frozen dataclasses: built once per event, they cost a quarter as
    much to make (bench/ctnetlink_decode.py)."""

    kind: str                  # new, update, destroy
    orig: Tuple
    reply: Tuple
    ct_id: int
    zone: int
    orig_packets: int = 0
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0
    start_ns: int = 0
    stop_ns: int = 0

    @property
    def is_dnat(self) -> bool:
        return rewritten(self.orig.dst, self.orig.dport, self.reply.src, self.reply.sport)


def rewritten(orig_dst: object, orig_dport: int, reply_src: object, reply_sport: int) -> bool:
    """A DNAT decision: the kernel rewrote the destination, so the reply comes from
    somewhere other than where the client sent it (addresses as text or raw bytes)."""
    return orig_dport != reply_sport or orig_dst != reply_src


@functools.lru_cache(maxsize=1 << 16)
def address(raw: bytes) -> str:
    """4 bytes (IPv4) or 16 (IPv6) as text, formatted once: a node's events name the
    same ClusterIPs, endpoints and clients over and over."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _bad(off: int, length: int) -> DecodeError:
    return DecodeError(f"attribute at {off} has bad length {length}")


# Decoding is planned once per message shape, then done with two unpacks.
#
# ``_plan`` walks a message's attributes (every header it reads, and where each wanted
# value sits) and compiles that into a ``_Layout``: one struct that reads every header
# the walk read, and one that reads every value. A node's events come in a handful of
# shapes (IPv4 TCP NEW, UDP NEW, DESTROY with counters, ...), so ``decode_ct`` keeps the
# layout of each (length, type, flags) and, for the next message of that key, checks
# that all those headers are the same before reading the values at the same offsets;
# any difference (another attribute order, a zone, an IPv6 tuple of equal length)
# plans again. Every header the walk reads is checked, so a layout reads what the walk
# would (tests/unit/test_ctnetlink.py). bench/ctnetlink_decode.py: 4.4 us per message
# here, against 8.8 us for the walk it replaced.

# The decoded event's values, in the order ``decode_ct`` takes them
_SLOTS = ("osrc", "odst", "oproto", "osport", "odport", "rsrc", "rdst", "rproto",
          "rsport", "rdport", "id", "zone", "op", "ob", "rp", "rb", "ts0", "ts1")
Fields = dict[str, tuple[int, str]]  # slot -> (offset from the body, struct code)


class _Layout(NamedTuple):
    headers: struct.Struct         # every attribute header the walk read, as u32 words
    expect: tuple[Any, ...]        # ... and their values in the planned message
    values: struct.Struct          # every wanted value, big-endian
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # values + defaults -> _SLOTS


def _header(buf: Buffer, off: int, end: int, seen: list[int]) -> tuple[int, int]:
    length, typ = _NLA.unpack_from(buf, off)
    if length < 4 or off + length > end:
        raise _bad(off, length)
    seen.append(off)
    return length, typ & 0x3FFF


def _plan_tuple(buf: Buffer, start: int, end: int, p: str, seen: list[int]) -> Fields:
    """Where a tuple nest's addresses, protocol and ports are (slots prefixed ``p``)."""
    got: Fields = {}
    off = start
    while off + 4 <= end:
        length, typ = _header(buf, off, end, seen)
        if typ in (CTA_TUPLE_IP, CTA_TUPLE_PROTO):
            o2, e = off + 4, off + length
            while o2 + 4 <= e:
                l2, t2 = _header(buf, o2, e, seen)
                n = l2 - 4
                if typ == CTA_TUPLE_IP:
                    if (t2 == CTA_IP_V4_SRC and n == 4) or (t2 == CTA_IP_V6_SRC and n == 16):
                        got[p + "src"] = (o2 + 4, f"{n}s")
                    elif (t2 == CTA_IP_V4_DST and n == 4) or (t2 == CTA_IP_V6_DST and n == 16):
                        got[p + "dst"] = (o2 + 4, f"{n}s")
                elif t2 == CTA_PROTO_NUM and n > 0:
                    got[p + "proto"] = (o2 + 4, "B")
                elif t2 == CTA_PROTO_SRC_PORT and n >= 2:
                    got[p + "sport"] = (o2 + 4, "H")
                elif t2 == CTA_PROTO_DST_PORT and n >= 2:
                    got[p + "dport"] = (o2 + 4, "H")
                o2 += (l2 + 3) & ~3
        off += (length + 3) & ~3
    if p + "src" not in got or p + "dst" not in got:
        raise DecodeError("tuple without addresses")
    return got


def _plan_pair(buf: Buffer, start: int, end: int, first: int, second: int,
               slots: tuple[str, str], seen: list[int]) -> Fields:
    """Counters (packets, bytes) or timestamps (start, stop): u64 values only."""
    got: Fields = {}
    off = start
    while off + 4 <= end:
        length, typ = _header(buf, off, end, seen)
        if length == 12 and typ in (first, second):
            got[slots[typ != first]] = (off + 4, "Q")
        off += (length + 3) & ~3
    return got


def _replace(fields: Fields, prefix: str, names: tuple[str, ...], new: Fields) -> None:
    """A repeated attribute replaces all its values, as a later one would in a walk."""
    for n in names:
        fields.pop(prefix + n, None)
    fields.update(new)


def _plan(buf: Buffer, start: int, end: int) -> _Layout:
    """Walk one message body (after nlmsghdr) and compile how to read its shape."""
    seen: list[int] = []
    fields: Fields = {}
    tup = ("src", "dst", "proto", "sport", "dport")
    off = start + 4  # skip struct nfgenmsg
    while off + 4 <= end:
        length, typ = _header(buf, off, end, seen)
        s, e = off + 4, off + length
        if typ == CTA_TUPLE_ORIG:
            _replace(fields, "o", tup, _plan_tuple(buf, s, e, "o", seen))
        elif typ == CTA_TUPLE_REPLY:
            _replace(fields, "r", tup, _plan_tuple(buf, s, e, "r", seen))
        elif typ == CTA_ID and length == 8:
            fields["id"] = (s, "I")
        elif typ == CTA_ZONE and length >= 6:
            fields["zone"] = (s, "H")
        elif typ == CTA_COUNTERS_ORIG:
            _replace(fields, "o", ("p", "b"), _plan_pair(
                buf, s, e, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, ("op", "ob"), seen))
        elif typ == CTA_COUNTERS_REPLY:
            _replace(fields, "r", ("p", "b"), _plan_pair(
                buf, s, e, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, ("rp", "rb"), seen))
        elif typ == CTA_TIMESTAMP:
            _replace(fields, "ts", ("0", "1"), _plan_pair(
                buf, s, e, CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP, ("ts0", "ts1"), seen))
        off += (length + 3) & ~3
    if "osrc" not in fields or "rsrc" not in fields:
        raise DecodeError("conntrack message without both tuples")
    headers = _compile("=", [(o - start, "I") for o in seen])
    placed = sorted(fields.items(), key=lambda kv: kv[1][0])
    values = _compile(">", [(o - start, code) for _, (o, code) in placed])
    index = {slot: i for i, (slot, _) in enumerate(placed)}
    default = len(placed)  # _DEFAULT follows the values: a missing slot reads 0
    return _Layout(headers, headers.unpack_from(buf, start), values,
                   operator.itemgetter(*(index.get(s, default) for s in _SLOTS)))


def _compile(order: str, items: list[tuple[int, str]]) -> struct.Struct:
    """A struct reading ``(offset, code)`` items, in offset order, skipping the gaps."""
    fmt, pos = order, 0
    for off, code in items:
        fmt += f"{off - pos}x{code}" if off > pos else code
        pos = off + struct.calcsize("=" + code)
    return struct.Struct(fmt)


_LAYOUTS: dict[tuple[int, int, int], _Layout] = {}
_MAX_LAYOUTS = 256  # shapes a node sends are few; a flood of odd ones must not grow this
_DEFAULT = (0,)


def _slots(buf: Buffer, start: int, end: int, msg_type: int, flags: int) -> tuple[Any, ...]:
    """One message body's _SLOTS, through the layout of its shape (planned if new)."""
    key = (end - start, msg_type, flags & NLM_F_CREATE)
    lay = _LAYOUTS.get(key)
    if lay is None or lay.headers.unpack_from(buf, start) != lay.expect:
        lay = _plan(buf, start, end)
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[key] = lay
    return lay.pick(lay.values.unpack_from(buf, start) + _DEFAULT)


def _kind(msg_type: int, flags: int) -> str:
    return ("destroy" if msg_type & 0xFF == IPCTNL_MSG_CT_DELETE
            else "new" if flags & NLM_F_CREATE else "update")


def decode_ct(buf: Buffer, start: int, end: int, msg_type: int, flags: int) -> CtEvent:
    """Decode the body (after nlmsghdr) of one ctnetlink message."""
    (osrc, odst, oproto, osport, odport, rsrc, rdst, rproto, rsport, rdport, ct_id, zone,
     op, ob, rp, rb, ts0, ts1) = _slots(buf, start, end, msg_type, flags)
    return CtEvent(_kind(msg_type, flags),
                   Tuple(address(osrc), address(odst), oproto, osport, odport),
                   Tuple(address(rsrc), address(rdst), rproto, rsport, rdport),
                   ct_id, zone, op, ob, rp, rb, ts0, ts1)


# An event as ``event_values`` gives it: kind, then what a decision row needs, the
# addresses still raw (4 or 16 bytes).
Values = tuple[str, bytes, bytes, int, int, int, bytes, int, int, int, int, int, int, int,
               int, int]


def event_values(buf: Buffer, start: int, end: int, msg_type: int, flags: int) -> Values:
    """Decode the body (after nlmsghdr) of one ctnetlink message to (kind, osrc, odst,
    proto, osport, odport, rsrc, rsport, ct_id, zone, orig packets, orig bytes, reply
    packets, reply bytes, start_ns, stop_ns) and build no event: the netlink source's
    path to a decision row (``decision.from_values``), as the eBPF ring's is."""
    (osrc, odst, oproto, osport, odport, rsrc, _rdst, _rproto, rsport, _rdport, ct_id, zone,
     op, ob, rp, rb, ts0, ts1) = _slots(buf, start, end, msg_type, flags)
    return (_kind(msg_type, flags), osrc, odst, oproto, osport, odport, rsrc, rsport, ct_id,
            zone, op, ob, rp, rb, ts0, ts1)


def values_dnat(v: Values) -> bool:
    """``CtEvent.is_dnat`` for ``event_values``."""
    return rewritten(v[2], v[5], v[6], v[7])


@dataclass(frozen=True, slots=True)
class Done:
    """End of a multipart dump."""


@dataclass(frozen=True, slots=True)
class NetlinkError:
    errno: int


def messages(buf: bytes) -> list[CtEvent | Done | NetlinkError]:
    """Every message in one recv() buffer (a buffer holds one or more messages; an
    event datagram, one). A list, not a generator: built once per datagram, at flood
    rates the generator's own overhead showed."""
    return _walk(buf, decode_ct, 0, len(buf))


def event_messages(buf: Buffer, start: int = 0, end: int | None = None
                   ) -> list[Values | Done | NetlinkError]:
    """``messages`` of ``buf[start:end]`` (read in place), with each ctnetlink message
    as ``event_values``."""
    return _walk(buf, event_values, start, len(buf) if end is None else end)


D = TypeVar("D")


def _walk(buf: Buffer, decode: Callable[[Buffer, int, int, int, int], D], off: int,
          n: int) -> list[D | Done | NetlinkError]:
    out: list[D | Done | NetlinkError] = []
    start = off
    while off + 16 <= n:
        length, msg_type, flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < 16 or off + length > n:
            raise DecodeError(f"netlink message at {off - start} has bad length {length}")
        if msg_type == NLMSG_DONE:
            out.append(Done())
        elif msg_type == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, off + 16)[0] if length >= 20 else 0
            out.append(NetlinkError(-err))
        elif msg_type >> 8 == NFNL_SUBSYS_CTNETLINK:
            out.append(decode(buf, off + 16, off + length, msg_type, flags))
        off += (length + 3) & ~3
    if off != n and off < n:
        raise DecodeError(f"{n - off} trailing bytes after the last message")
    return out


def dump_request(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """A request for the whole conntrack table (both families by default)."""
    body = struct.pack("=BBH", family, 0, 0)
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return _NLMSGHDR.pack(16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
