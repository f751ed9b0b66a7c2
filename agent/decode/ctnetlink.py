"""Decode ctnetlink (nfnetlink conntrack) messages into conntrack events.

Hand-written on purpose: bench/ctnetlink_decode.py measures it against pyroute2's
``nfct_msg`` decoder on the same messages (figures in BENCHMARKS.md); at flood rates the
decoder is the agent's hot path. Layouts are from linux/netfilter/nfnetlink_conntrack.h.
"""

from __future__ import annotations

import functools
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

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
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


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
        """The kernel rewrote the destination: the reply comes from somewhere else."""
        return (self.orig.dst, self.orig.dport) != (self.reply.src, self.reply.sport)


@functools.lru_cache(maxsize=1 << 16)
def address(raw: bytes) -> str:
    """4 bytes (IPv4) or 16 (IPv6) as text, formatted once: a node's events name the
    same ClusterIPs, endpoints and clients over and over."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _bad(off: int, length: int) -> DecodeError:
    return DecodeError(f"attribute at {off} has bad length {length}")


# The decoders below walk attributes with inline loops, not through ``attrs``: a
# generator per nesting level cost more than the rest of the decode
# (bench/ctnetlink_decode.py).

def _tuple(buf: bytes, start: int, end: int) -> Tuple:
    unpack = _NLA.unpack_from
    src = dst = ""
    proto = sport = dport = 0
    off = start
    while off + 4 <= end:
        length, typ = unpack(buf, off)
        if length < 4 or off + length > end:
            raise _bad(off, length)
        typ &= 0x3FFF
        if typ in (CTA_TUPLE_IP, CTA_TUPLE_PROTO):
            o2, e = off + 4, off + length
            while o2 + 4 <= e:
                l2, t2 = unpack(buf, o2)
                if l2 < 4 or o2 + l2 > e:
                    raise _bad(o2, l2)
                t2 &= 0x3FFF
                n = l2 - 4
                if typ == CTA_TUPLE_IP:
                    if (t2 == CTA_IP_V4_SRC and n == 4) or (t2 == CTA_IP_V6_SRC and n == 16):
                        src = address(buf[o2 + 4:o2 + l2])
                    elif (t2 == CTA_IP_V4_DST and n == 4) or (t2 == CTA_IP_V6_DST and n == 16):
                        dst = address(buf[o2 + 4:o2 + l2])
                elif t2 == CTA_PROTO_NUM and n > 0:
                    proto = buf[o2 + 4]
                elif t2 == CTA_PROTO_SRC_PORT and n >= 2:
                    sport = _BE16.unpack_from(buf, o2 + 4)[0]
                elif t2 == CTA_PROTO_DST_PORT and n >= 2:
                    dport = _BE16.unpack_from(buf, o2 + 4)[0]
                o2 += (l2 + 3) & ~3
        off += (length + 3) & ~3
    if not src or not dst:
        raise DecodeError("tuple without addresses")
    return Tuple(src, dst, proto, sport, dport)


# An IPv4 tuple nest as the kernel writes it (ctnetlink_dump_tuples): TUPLE_IP{V4_SRC,
# V4_DST}, TUPLE_PROTO{NUM, SRC_PORT, DST_PORT}, 52 bytes with its header. Read with one
# unpack when every header is where that layout puts it; any other shape goes through
# ``_tuple``, which gives the same result for this one (tests/unit/test_ctnetlink.py).
_V4_TUPLE = struct.Struct("=HHHHHH4sHH4sHHHHB3xHHH2xHHH2x")
_V4_HEADERS = (52, 20, 1, 8, 1, 8, 2, 28, 2, 5, 1, 6, 2, 6, 3)


def _tuple_v4(buf: bytes, off: int) -> Tuple | None:
    """The tuple attribute at ``off`` in the kernel's IPv4 layout, or None."""
    if off + 52 > len(buf):
        return None
    (l0, _, l1, t1, l2, t2, src, l3, t3, dst, l4, t4, l5, t5, proto, l6, t6, sport, l7, t7,
     dport) = _V4_TUPLE.unpack_from(buf, off)
    if (l0, l1, t1 & 0x3FFF, l2, t2, l3, t3, l4, t4 & 0x3FFF, l5, t5, l6, t6, l7,
            t7) != _V4_HEADERS:
        return None
    return Tuple(address(src), address(dst), proto, socket.ntohs(sport), socket.ntohs(dport))


def _pair(buf: bytes, start: int, end: int, first: int, second: int,
          size: int, fmt: struct.Struct) -> tuple[int, int]:
    """Two values of a nested attribute (counters: packets, bytes; timestamps: start,
    stop), each read only when its payload is ``size`` bytes."""
    unpack = _NLA.unpack_from
    a = b = 0
    off = start
    while off + 4 <= end:
        length, typ = unpack(buf, off)
        if length < 4 or off + length > end:
            raise _bad(off, length)
        typ &= 0x3FFF
        if length - 4 == size:
            if typ == first:
                a = fmt.unpack_from(buf, off + 4)[0]
            elif typ == second:
                b = fmt.unpack_from(buf, off + 4)[0]
        off += (length + 3) & ~3
    return a, b


def decode_ct(buf: bytes, start: int, end: int, msg_type: int, flags: int) -> CtEvent:
    """Decode the body (after nlmsghdr) of one ctnetlink message."""
    sub = msg_type & 0xFF
    kind = ("destroy" if sub == IPCTNL_MSG_CT_DELETE
            else "new" if flags & NLM_F_CREATE else "update")
    orig = reply = None
    ct_id = zone = 0
    op = ob = rp = rb = ts0 = ts1 = 0
    unpack = _NLA.unpack_from
    off = start + 4  # skip struct nfgenmsg
    while off + 4 <= end:
        length, typ = unpack(buf, off)
        if length < 4 or off + length > end:
            raise _bad(off, length)
        typ &= 0x3FFF
        s, e = off + 4, off + length
        if typ == CTA_TUPLE_ORIG:
            orig = (length == 52 and _tuple_v4(buf, off)) or _tuple(buf, s, e)
        elif typ == CTA_TUPLE_REPLY:
            reply = (length == 52 and _tuple_v4(buf, off)) or _tuple(buf, s, e)
        elif typ == CTA_ID and e - s == 4:
            ct_id = _BE32.unpack_from(buf, s)[0]
        elif typ == CTA_ZONE and e - s >= 2:
            zone = _BE16.unpack_from(buf, s)[0]
        elif typ == CTA_COUNTERS_ORIG:
            op, ob = _pair(buf, s, e, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, 8, _BE64)
        elif typ == CTA_COUNTERS_REPLY:
            rp, rb = _pair(buf, s, e, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, 8, _BE64)
        elif typ == CTA_TIMESTAMP:
            ts0, ts1 = _pair(buf, s, e, CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP, 8, _BE64)
        off += (length + 3) & ~3
    if orig is None or reply is None:
        raise DecodeError("conntrack message without both tuples")
    return CtEvent(kind, orig, reply, ct_id, zone, op, ob, rp, rb, ts0, ts1)


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
    out: list[CtEvent | Done | NetlinkError] = []
    off, n = 0, len(buf)
    while off + 16 <= n:
        length, msg_type, flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < 16 or off + length > n:
            raise DecodeError(f"netlink message at {off} has bad length {length}")
        if msg_type == NLMSG_DONE:
            out.append(Done())
        elif msg_type == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, off + 16)[0] if length >= 20 else 0
            out.append(NetlinkError(-err))
        elif msg_type >> 8 == NFNL_SUBSYS_CTNETLINK:
            out.append(decode_ct(buf, off + 16, off + length, msg_type, flags))
        off += (length + 3) & ~3
    if off != n and off < n:
        raise DecodeError(f"{n - off} trailing bytes after the last message")
    return out


def dump_request(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """A request for the whole conntrack table (both families by default)."""
    body = struct.pack("=BBH", family, 0, 0)
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return _NLMSGHDR.pack(16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
