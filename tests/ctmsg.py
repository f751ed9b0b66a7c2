"""ctnetlink event messages built to the kernel's layout, for decoder and filter tests."""

from __future__ import annotations

import socket
import struct
from typing import Any

from natlens.agent.decode import ctnetlink as c

CTA_STATUS = 3
CTA_ZONE = 18


def nla(typ: int, payload: bytes, nested: bool = False) -> bytes:
    body = struct.pack("=HH", 4 + len(payload), typ | (0x8000 if nested else 0)) + payload
    return body + b"\0" * (-len(body) % 4)


def tuple_attr(typ: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    a, b = (c.CTA_IP_V6_SRC, c.CTA_IP_V6_DST) if fam == socket.AF_INET6 else (
        c.CTA_IP_V4_SRC, c.CTA_IP_V4_DST)
    ip = nla(c.CTA_TUPLE_IP, nla(a, socket.inet_pton(fam, src))
             + nla(b, socket.inet_pton(fam, dst)), True)
    pr = nla(c.CTA_TUPLE_PROTO, nla(c.CTA_PROTO_NUM, bytes([proto]))
             + nla(c.CTA_PROTO_SRC_PORT, struct.pack(">H", sport))
             + nla(c.CTA_PROTO_DST_PORT, struct.pack(">H", dport)), True)
    return nla(typ, ip + pr, True)


def message(kind: str, orig: tuple[Any, ...], reply: tuple[Any, ...], ct_id: int,
            counters: tuple[int, ...] = (0, 0, 0, 0), ts: tuple[int, int] = (0, 0),
            zone: int | None = None) -> bytes:
    """One ctnetlink NEW/DESTROY event; tuples are (src, dst, proto, sport, dport)."""
    sub = c.IPCTNL_MSG_CT_DELETE if kind == "destroy" else c.IPCTNL_MSG_CT_NEW
    flags = c.NLM_F_CREATE | 0x200 if kind == "new" else 0
    # In the kernel's order (ctnetlink_conntrack_event): tuples, zone, id, status.
    attrs = tuple_attr(c.CTA_TUPLE_ORIG, *orig) + tuple_attr(c.CTA_TUPLE_REPLY, *reply)
    if zone is not None:
        attrs += nla(CTA_ZONE, struct.pack(">H", zone))
    attrs += nla(c.CTA_ID, struct.pack(">I", ct_id)) + nla(CTA_STATUS, struct.pack(">I", 0x1aa))
    if kind == "destroy":
        attrs += nla(c.CTA_COUNTERS_ORIG, nla(c.CTA_COUNTERS_PACKETS,
                                              struct.pack(">Q", counters[0]))
                     + nla(c.CTA_COUNTERS_BYTES, struct.pack(">Q", counters[1])), True)
        attrs += nla(c.CTA_COUNTERS_REPLY, nla(c.CTA_COUNTERS_PACKETS,
                                               struct.pack(">Q", counters[2]))
                     + nla(c.CTA_COUNTERS_BYTES, struct.pack(">Q", counters[3])), True)
        attrs += nla(c.CTA_TIMESTAMP, nla(c.CTA_TIMESTAMP_START, struct.pack(">Q", ts[0]))
                     + nla(c.CTA_TIMESTAMP_STOP, struct.pack(">Q", ts[1])), True)
    family = socket.AF_INET6 if ":" in orig[0] else socket.AF_INET
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (c.NFNL_SUBSYS_CTNETLINK << 8) | sub,
                       flags, 0, 0) + body
