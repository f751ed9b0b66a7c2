"""Decode ctnetlink (nfnetlink conntrack) messages into conntrack events.

Hand-written on purpose: bench/ctnetlink_decode.py measures it against pyroute2's
NFCTSocket decoder on the same messages (figures in BENCHMARKS.md); at flood rates the
decoder is the agent's hot path. Layouts are from linux/netfilter/nfnetlink_conntrack.h.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Tuple:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class CtEvent:
    """One conntrack message: an event (new/destroy) or one entry of a table dump."""

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


def attrs(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each netlink attribute in buf[start:end]."""
    off = start
    while off + 4 <= end:
        length, typ = _NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            raise DecodeError(f"attribute at {off} has bad length {length}")
        yield typ & 0x3FFF, off + 4, off + length
        off += (length + 3) & ~3


def _tuple(buf: bytes | memoryview, start: int, end: int) -> Tuple:
    src = dst = ""
    proto = sport = dport = 0
    for typ, s, e in attrs(buf, start, end):
        if typ == CTA_TUPLE_IP:
            for t2, s2, e2 in attrs(buf, s, e):
                if t2 in (CTA_IP_V4_SRC, CTA_IP_V4_DST) and e2 - s2 == 4:
                    ip = socket.inet_ntop(socket.AF_INET, bytes(buf[s2:e2]))
                elif t2 in (CTA_IP_V6_SRC, CTA_IP_V6_DST) and e2 - s2 == 16:
                    ip = socket.inet_ntop(socket.AF_INET6, bytes(buf[s2:e2]))
                else:
                    continue
                if t2 in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = ip
                else:
                    dst = ip
        elif typ == CTA_TUPLE_PROTO:
            for t2, s2, e2 in attrs(buf, s, e):
                if t2 == CTA_PROTO_NUM and e2 > s2:
                    proto = buf[s2]
                elif t2 == CTA_PROTO_SRC_PORT and e2 - s2 >= 2:
                    sport = _BE16.unpack_from(buf, s2)[0]
                elif t2 == CTA_PROTO_DST_PORT and e2 - s2 >= 2:
                    dport = _BE16.unpack_from(buf, s2)[0]
    if not src or not dst:
        raise DecodeError("tuple without addresses")
    return Tuple(src, dst, proto, sport, dport)


def _counters(buf: bytes | memoryview, start: int, end: int) -> tuple[int, int]:
    packets = nbytes = 0
    for typ, s, e in attrs(buf, start, end):
        if typ == CTA_COUNTERS_PACKETS and e - s == 8:
            packets = _BE64.unpack_from(buf, s)[0]
        elif typ == CTA_COUNTERS_BYTES and e - s == 8:
            nbytes = _BE64.unpack_from(buf, s)[0]
    return packets, nbytes


def decode_ct(buf: bytes | memoryview, start: int, end: int, msg_type: int,
              flags: int) -> CtEvent:
    """Decode the body (after nlmsghdr) of one ctnetlink message."""
    sub = msg_type & 0xFF
    kind = ("destroy" if sub == IPCTNL_MSG_CT_DELETE
            else "new" if flags & NLM_F_CREATE else "update")
    orig = reply = None
    ct_id = zone = 0
    op = ob = rp = rb = ts0 = ts1 = 0
    for typ, s, e in attrs(buf, start + 4, end):  # skip struct nfgenmsg
        if typ == CTA_TUPLE_ORIG:
            orig = _tuple(buf, s, e)
        elif typ == CTA_TUPLE_REPLY:
            reply = _tuple(buf, s, e)
        elif typ == CTA_ID and e - s == 4:
            ct_id = _BE32.unpack_from(buf, s)[0]
        elif typ == CTA_ZONE and e - s >= 2:
            zone = _BE16.unpack_from(buf, s)[0]
        elif typ == CTA_COUNTERS_ORIG:
            op, ob = _counters(buf, s, e)
        elif typ == CTA_COUNTERS_REPLY:
            rp, rb = _counters(buf, s, e)
        elif typ == CTA_TIMESTAMP:
            for t2, s2, e2 in attrs(buf, s, e):
                if t2 == CTA_TIMESTAMP_START and e2 - s2 == 8:
                    ts0 = _BE64.unpack_from(buf, s2)[0]
                elif t2 == CTA_TIMESTAMP_STOP and e2 - s2 == 8:
                    ts1 = _BE64.unpack_from(buf, s2)[0]
    if orig is None or reply is None:
        raise DecodeError("conntrack message without both tuples")
    return CtEvent(kind, orig, reply, ct_id, zone, op, ob, rp, rb, ts0, ts1)


@dataclass(frozen=True, slots=True)
class Done:
    """End of a multipart dump."""


@dataclass(frozen=True, slots=True)
class NetlinkError:
    errno: int


def messages(buf: bytes | memoryview) -> Iterator[CtEvent | Done | NetlinkError]:
    """Every message in one recv() buffer (a buffer holds one or more messages)."""
    off, n = 0, len(buf)
    while off + 16 <= n:
        length, msg_type, flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < 16 or off + length > n:
            raise DecodeError(f"netlink message at {off} has bad length {length}")
        if msg_type == NLMSG_DONE:
            yield Done()
        elif msg_type == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, off + 16)[0] if length >= 20 else 0
            yield NetlinkError(-err)
        elif msg_type >> 8 == NFNL_SUBSYS_CTNETLINK:
            yield decode_ct(buf, off + 16, off + length, msg_type, flags)
        off += (length + 3) & ~3
    if off != n and off < n:
        raise DecodeError(f"{n - off} trailing bytes after the last message")


def dump_request(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """A request for the whole conntrack table (both families by default)."""
    body = struct.pack("=BBH", family, 0, 0)
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return _NLMSGHDR.pack(16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
