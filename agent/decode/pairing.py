"""Pair the packet that left a client (to VIP:port) with the same connection after
translation (to pod:port): one DNAT decision per pair (pure, streaming).

A capture on a node (``tcpdump -i any``) sees a connection's first packet on more than
one interface: before DNAT on the client's veth, after it on the server's veth or on
eth0. TCP pairs by client address, port and initial sequence number, so a retransmitted
SYN is the same connection and a reused port with a new ISN is a new one. UDP pairs by
client address and port within ``window_ns``; once paired, the flow's later datagrams
are ignored until it has been idle for ``udp_idle_ns`` (conntrack's UDP timeout).
With ``vips`` (from the node's rules) the original destination is known; without, it is
the first destination seen. State older than ``window_ns`` is dropped, so memory stays
bounded on files of any size; what never paired is counted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from natlens.agent.decode.packets import FirstPacket


@dataclass(frozen=True, slots=True)
class Pair:
    time_ns: int
    protocol: str
    client: str
    client_port: int
    vip: str
    vip_port: int
    endpoint: str
    endpoint_port: int


@dataclass
class PairingStats:
    packets: int = 0
    pairs: int = 0
    retransmits: int = 0
    unpaired: int = 0        # a first packet whose translated twin never appeared


class Pairer:
    def __init__(self, vips: set[tuple[str, int, str]] | None = None,
                 window_ns: int = 5 * 10**9, udp_idle_ns: int = 30 * 10**9) -> None:
        self.vips = vips
        self.window_ns, self.udp_idle_ns = window_ns, udp_idle_ns
        self.stats = PairingStats()
        # key → (first time, original destination, decided?)
        self._open: OrderedDict[tuple[object, ...], tuple[int, tuple[str, int], bool]] = \
            OrderedDict()
        self._udp_done: OrderedDict[tuple[str, int], int] = OrderedDict()

    def _expire(self, now: int) -> None:
        while self._open:
            key, (t0, _, decided) = next(iter(self._open.items()))
            if now - t0 <= self.window_ns:
                break
            del self._open[key]
            if not decided:
                self.stats.unpaired += 1
        while self._udp_done:
            key, last = next(iter(self._udp_done.items()))
            if now - last <= self.udp_idle_ns:
                break
            del self._udp_done[key]

    def _is_vip(self, p: FirstPacket) -> bool | None:
        if self.vips is None:
            return None
        return (p.dst, p.dport, p.protocol) in self.vips

    def feed(self, p: FirstPacket) -> Pair | None:
        self.stats.packets += 1
        self._expire(p.time_ns)
        if p.protocol == "udp":
            done = self._udp_done.get((p.src, p.sport))
            if done is not None:
                self._udp_done[(p.src, p.sport)] = p.time_ns
                self._udp_done.move_to_end((p.src, p.sport))
                return None
            key: tuple[object, ...] = ("udp", p.src, p.sport)
        else:
            key = ("tcp", p.src, p.sport, p.isn)
        seen = self._open.get(key)
        dst = (p.dst, p.dport)
        if seen is None:
            if self._is_vip(p) is False:
                return None  # to a pod directly, or the translated twin of nothing we saw
            self._open[key] = (p.time_ns, dst, False)
            return None
        t0, original, decided = seen
        if decided or dst == original:
            self.stats.retransmits += 1
            return None
        if self._is_vip(p):
            return None  # another VIP: not a translation of this one
        self._open[key] = (t0, original, True)
        if p.protocol == "udp":
            self._udp_done[(p.src, p.sport)] = p.time_ns
        self.stats.pairs += 1
        return Pair(t0, p.protocol, p.src, p.sport, original[0], original[1], p.dst, p.dport)

    def finish(self) -> None:
        """At the end of a file: everything still open and undecided never paired."""
        self.stats.unpaired += sum(1 for _, _, d in self._open.values() if not d)
        self._open.clear()


def pair_all(packets: Iterable[FirstPacket], pairer: Pairer) -> Iterator[Pair]:
    for p in packets:
        out = pairer.feed(p)
        if out is not None:
            yield out
    pairer.finish()
