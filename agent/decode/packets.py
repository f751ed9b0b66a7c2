"""A captured frame → the first packet of a flow, if it is one (pure).

Only what pairing needs is decoded, straight from the bytes: link header (Ethernet,
Linux cooked v1/v2 as ``tcpdump -i any`` writes, raw IP), IPv4/IPv6, and the TCP or UDP
ports; a TCP SYN without ACK carries its initial sequence number. Scapy's own
per-packet dissection is skipped for speed (BENCHMARKS.md); scapy reads the files.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

DLT_EN10MB, DLT_RAW, DLT_LINUX_SLL, DLT_IPV4, DLT_IPV6, DLT_LINUX_SLL2 = 1, 101, 113, 228, \
    229, 276
LINKTYPES = {DLT_EN10MB: "Ethernet", DLT_RAW: "raw IP", DLT_LINUX_SLL: "Linux cooked v1",
             DLT_IPV4: "raw IPv4", DLT_IPV6: "raw IPv6", DLT_LINUX_SLL2: "Linux cooked v2"}
ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
TCP, UDP = 6, 17


class UnknownLinkType(ValueError):
    """The capture's link type is not one natlens reads; the message names it."""


@dataclass(frozen=True, slots=True)
class FirstPacket:
    time_ns: int
    protocol: str        # tcp, udp
    src: str
    sport: int
    dst: str
    dport: int
    isn: int             # TCP initial sequence number; 0 for UDP


def _l3_offset(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, ethertype), or None when it is not IP."""
    if linktype == DLT_EN10MB:
        if len(frame) < 14:
            return None
        off, etype = 14, struct.unpack_from("!H", frame, 12)[0]
        while etype == ETH_VLAN and len(frame) >= off + 4:
            etype = struct.unpack_from("!H", frame, off + 2)[0]
            off += 4
        return off, etype
    if linktype == DLT_LINUX_SLL:
        return (16, struct.unpack_from("!H", frame, 14)[0]) if len(frame) >= 16 else None
    if linktype == DLT_LINUX_SLL2:
        return (20, struct.unpack_from("!H", frame, 0)[0]) if len(frame) >= 20 else None
    if linktype in (DLT_RAW, DLT_IPV4, DLT_IPV6):
        if not frame:
            return None
        return 0, ETH_IPV6 if frame[0] >> 4 == 6 else ETH_IPV4
    raise UnknownLinkType(f"link type {linktype} is not one natlens reads "
                          f"({', '.join(f'{n} ({k})' for k, n in sorted(LINKTYPES.items()))})")


def first_packet(linktype: int, frame: bytes, time_ns: int) -> FirstPacket | None:
    """The flow-opening packet in ``frame`` (TCP SYN without ACK, or any UDP datagram:
    pairing decides which UDP datagram opens a flow), else None."""
    where = _l3_offset(linktype, frame)
    if where is None:
        return None
    off, etype = where
    if etype == ETH_IPV4 and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        ihl = (frame[off] & 0x0F) * 4
        frag = struct.unpack_from("!H", frame, off + 6)[0]
        if ihl < 20 or frag & 0x1FFF:  # a later fragment has no ports
            return None
        proto = frame[off + 9]
        src = str(ipaddress.IPv4Address(frame[off + 12:off + 16]))
        dst = str(ipaddress.IPv4Address(frame[off + 16:off + 20]))
        l4 = off + ihl
    elif etype == ETH_IPV6 and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        proto = frame[off + 6]  # extension headers are not followed: kube traffic has none
        src = str(ipaddress.IPv6Address(frame[off + 8:off + 24]))
        dst = str(ipaddress.IPv6Address(frame[off + 24:off + 40]))
        l4 = off + 40
    else:
        return None
    if proto == TCP and len(frame) >= l4 + 14:
        sport, dport, seq = struct.unpack_from("!HHI", frame, l4)
        flags = frame[l4 + 13]
        if flags & 0x02 and not flags & 0x10:  # SYN, not SYN-ACK
            return FirstPacket(time_ns, "tcp", src, sport, dst, dport, seq)
        return None
    if proto == UDP and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        return FirstPacket(time_ns, "udp", src, sport, dst, dport, 0)
    return None
