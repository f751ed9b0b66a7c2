"""Kernel counters (per-CPU maps, summed) to the wire: what changed since the last read.

A source that counts in the kernel reads running totals; the collector stores each
increase once per epoch (the maps' random id), so what is shipped is the totals, and
the change since the last read only says which keys moved. Losses counted in the
kernel are running totals too.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from natlens.agent.decode.ctnetlink import PROTOCOLS
from natlens.proto import natlens_pb2 as pb


@dataclass(frozen=True, slots=True)
class CounterKey:
    protocol: str
    vip: str
    vip_port: int
    endpoint_ip: str
    endpoint_port: int


@dataclass(frozen=True, slots=True)
class CounterValue:
    connections: int = 0
    closed: int = 0
    orig_packets: int = 0
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0
    duration_ns: int = 0


def decode_key(family: int, proto: int, vip: bytes, vip_port: int, ep: bytes,
               ep_port: int) -> CounterKey:
    """A counter map key (addresses in 16 bytes, IPv4 in the first 4) as text."""
    if family == socket.AF_INET:
        a, b = socket.inet_ntop(socket.AF_INET, vip[:4]), socket.inet_ntop(socket.AF_INET, ep[:4])
    elif family == socket.AF_INET6:
        a, b = socket.inet_ntop(socket.AF_INET6, vip), socket.inet_ntop(socket.AF_INET6, ep)
    else:
        raise ValueError(f"address family {family}")
    return CounterKey(PROTOCOLS.get(proto, str(proto)), a, vip_port, b, ep_port)


def delta(key: CounterKey, v: CounterValue, last: CounterValue, epoch: str, start_ns: int,
          end_ns: int) -> pb.CounterDelta:
    """One key's window [start, end]: its increase and its running totals."""
    return pb.CounterDelta(
        window_start_ns=start_ns, window_end_ns=end_ns, protocol=key.protocol, vip=key.vip,
        vip_port=key.vip_port, endpoint_ip=key.endpoint_ip, endpoint_port=key.endpoint_port,
        connections=v.connections - last.connections,
        bytes=v.orig_bytes + v.reply_bytes - last.orig_bytes - last.reply_bytes,
        packets=v.orig_packets + v.reply_packets - last.orig_packets - last.reply_packets,
        epoch=epoch, total_connections=v.connections, total_closed=v.closed,
        total_orig_packets=v.orig_packets, total_orig_bytes=v.orig_bytes,
        total_reply_packets=v.reply_packets, total_reply_bytes=v.reply_bytes,
        total_duration_ns=v.duration_ns)


class CounterTracker:
    """The totals last shipped, so each read ships only the keys that moved."""

    def __init__(self, epoch: str, source: pb.Source, start_ns: int) -> None:
        self.epoch, self.source = epoch, source
        self._shipped: dict[CounterKey, CounterValue] = {}
        self._lost: dict[str, int] = {}
        self._window_start = start_ns

    def deltas(self, current: dict[CounterKey, CounterValue],
               now_ns: int) -> list[pb.CounterDelta]:
        zero = CounterValue()
        out = [delta(k, v, last, self.epoch, self._window_start, now_ns)
               for k, v in current.items() if v != (last := self._shipped.get(k, zero))]
        self._shipped = current
        self._window_start = now_ns
        return out

    def losses(self, totals: dict[str, int], now_ns: int) -> list[pb.LostEvents]:
        """``totals``: reason → running total of events the kernel did not keep."""
        out = []
        for reason, total in totals.items():
            last = self._lost.get(reason, 0)
            if total != last:
                out.append(pb.LostEvents(time_ns=now_ns, source=self.source, reason=reason,
                                         count=total - last, epoch=self.epoch, total=total))
                self._lost[reason] = total
        return out
