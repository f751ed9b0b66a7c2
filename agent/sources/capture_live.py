"""The packet source (``--source pcap``): the first packet of each flow on every
interface of the node's namespace, as ``tcpdump -i any`` would see it, paired before
and after DNAT.

One AF_PACKET socket not bound to an interface receives every interface's packets, so a
pod's veth is covered from the moment it appears; pyroute2's link events say which
come and go (logged, and counted in the agent's metrics). A classic BPF filter, compiled
by ``tcpdump -ddd``, passes only TCP SYNs without ACK and UDP to Python; everything
else stays in the kernel. Drops are read from PACKET_STATISTICS and reported.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable

from natlens import netns
from natlens.agent.decode.decision import from_pair
from natlens.agent.decode.packets import DLT_EN10MB, FirstPacket, first_packet
from natlens.agent.decode.pairing import Pairer
from natlens.agent.sources.stage import Sink
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb

log = logging.getLogger("natlens.agent.capture")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SOL_PACKET, PACKET_STATISTICS = 263, 6
FILTER = "(tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) or udp"


class CaptureUnavailable(NatlensError, OSError):
    """The capture socket or its filter could not be set up; the message says why."""


def compile_filter(expr: str = FILTER) -> bytes:
    """``struct sock_fprog``'s instructions for ``expr`` on Ethernet frames."""
    try:
        r = subprocess.run(["tcpdump", "-ddd", "-y", "EN10MB", expr], capture_output=True,
                           text=True, timeout=30)
    except FileNotFoundError:
        raise CaptureUnavailable("tcpdump not found (it compiles the capture filter): "
                                 "install tcpdump") from None
    if r.returncode != 0:
        raise CaptureUnavailable(f"tcpdump -ddd: {r.stderr.strip()}")
    nums = [int(x) for x in r.stdout.split()]
    n, ins = nums[0], nums[1:]
    return b"".join(struct.pack("HBBI", *ins[i * 4:i * 4 + 4]) for i in range(n))


class LiveCapture:
    def __init__(self, ns: str | None, rcvbuf: int = 32 << 20) -> None:
        prog = compile_filter()
        try:
            with netns.entered(ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureUnavailable("AF_PACKET needs CAP_NET_RAW") from None
        import ctypes

        cbuf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(cbuf))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        self.sock = s
        self.dropped = 0
        self.seen = 0
        self.interfaces: set[str] = set()
        self._links = threading.Thread(target=self._follow_links, args=(ns,), name="links",
                                       daemon=True)
        self._stop = threading.Event()

    def start_link_monitor(self) -> None:
        self._links.start()

    def _follow_links(self, ns: str | None) -> None:
        try:
            from pyroute2 import IPRoute
        except ImportError:
            return
        try:
            with netns.entered(ns):
                ipr = IPRoute()
            ipr.bind()
            self.interfaces = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            log.info("capture: %d interfaces (%s)", len(self.interfaces),
                     ", ".join(sorted(self.interfaces)))
            while not self._stop.is_set():
                for msg in ipr.get():
                    name = msg.get_attr("IFLA_IFNAME") if hasattr(msg, "get_attr") else None
                    if not name:
                        continue
                    if msg["event"] == "RTM_NEWLINK" and name not in self.interfaces:
                        self.interfaces.add(name)
                        log.info("capture: interface %s appeared; captured", name)
                    elif msg["event"] == "RTM_DELLINK" and name in self.interfaces:
                        self.interfaces.discard(name)
                        log.info("capture: interface %s removed", name)
            ipr.close()
        except Exception as e:  # the monitor only informs; capture goes on without it
            log.warning("capture: link monitor stopped: %s", e)

    def read(self, timeout: float) -> list[FirstPacket]:
        out: list[FirstPacket] = []
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return out
        for _ in range(4096):
            try:
                frame, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            self.seen += 1
            if addr[3] != 1:  # ARPHRD_ETHER: veths, the bridge, loopback
                continue
            p = first_packet(DLT_EN10MB, frame, time.time_ns())
            if p is not None:
                out.append(p)
        return out

    def drops(self) -> int:
        """Packets the kernel dropped since the last call (the socket's queue was full)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        _, dropped = struct.unpack("II", raw)
        self.dropped += dropped
        return int(dropped)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()



class CaptureSource:
    """``--source pcap``: decisions from packets, paired before and after DNAT, limited
    to the VIPs of the node's current rules (``vips``, read each turn)."""

    name = "pcap"
    proto = pb.SOURCE_PCAP

    def __init__(self, netns: str | None, rcvbuf: int,
                 vips: Callable[[], set[tuple[str, int, str]] | None]) -> None:
        self.netns, self.rcvbuf, self.vips = netns, rcvbuf, vips
        self.stats = {"new": 0, "lost": 0, "non_dnat": 0}
        self._cap: LiveCapture | None = None

    def open(self) -> None:
        self._cap = LiveCapture(self.netns, self.rcvbuf)
        log.info("source pcap: capturing every interface of %s (filter: %s)",
                 self.netns or "this namespace", FILTER)

    def capabilities(self) -> set[str]:
        return {"CAP_NET_ADMIN"}  # the socket is open; reading rules is what remains

    def run(self, sink: Sink, stop: threading.Event) -> None:
        cap = self._cap
        assert cap is not None, "open() first"
        cap.start_link_monitor()
        pairer = Pairer(self.vips())
        next_stats = time.monotonic() + 5
        try:
            while not stop.is_set():
                sink.turn()
                pairer.vips = self.vips()
                rows = [from_pair(pair) for p in cap.read(0.2)
                        if (pair := pairer.feed(p)) is not None]
                if rows:
                    self.stats["new"] += len(rows)
                    sink.decisions(rows)
                if time.monotonic() >= next_stats:
                    self._losses(sink, cap, pairer)
                    next_stats = time.monotonic() + 5
            for p in cap.read(0.0):
                pairer.feed(p)
            self._losses(sink, cap, pairer)
        finally:
            cap.close()

    def _losses(self, sink: Sink, cap: LiveCapture, pairer: Pairer) -> None:
        dropped = cap.drops()
        if dropped:
            self.stats["lost"] += dropped
            sink.lost(pb.LostEvents(time_ns=time.time_ns(), source=self.proto,
                                    reason="capture-drops", count=dropped))
        self.stats["non_dnat"] = pairer.stats.unpaired
