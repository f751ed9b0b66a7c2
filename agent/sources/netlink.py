"""The netlink source: every conntrack event decoded in user space (``auto``'s fallback).

One datagram per event, read 64 at a time (``conntrack.py``); only DNAT decisions
(the reply comes from somewhere other than where the client sent it) become rows.
Losses are measured, not guessed: after a receive-buffer overflow the kernel's drop
count is shipped as lost, and the table is dumped once so that DNAT decisions still in
it are recovered (and marked recovered, counted).

At start the table is dumped: entries already there were decided before the agent
looked, and are stored as ``snapshot`` (not counted). The eBPF source is this source
with a filter on the socket (``ebpf.py``), so it overrides the hooks marked below.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from natlens.agent.decode.ctnetlink import Values, values_dnat
from natlens.agent.decode.decision import from_values, to_decision
from natlens.agent.sources.conntrack import (
    DEFAULT_RCVBUF,
    ConntrackSocket,
    Overflow,
    enable_accounting,
    events_disabled,
)
from natlens.agent.sources.seen import SeenIds
from natlens.agent.sources.stage import Sink
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow

log = logging.getLogger("natlens.agent")

READ_CHUNK = 512    # decisions handed to the sink at a time
GATHER_S = 0.005    # after a read, how long events may queue before the next
IDLE_WAIT_S = 1.0   # the loop's longest sleep
_NEW, _DESTROY = pb.EVENT_NEW, pb.EVENT_DESTROY


def prepare_conntrack(ns: str | None, accounting: bool) -> None:
    """Per-connection bytes and timestamps on (said when switched), and a loud line
    when the namespace sends no events at all."""
    where = ns or "this namespace"
    if accounting:
        changed = enable_accounting(ns)
        if changed:
            log.info("conntrack: switched on %s", ", ".join(changed))
    if events_disabled(ns):
        log.error("conntrack: events are disabled in %s (net.netfilter.nf_conntrack_events"
                  "=0): no decision can be seen until it is 1 or 2", where)


class NetlinkSource:
    name = "netlink"
    proto = pb.SOURCE_NETLINK

    def __init__(self, netns: str | None = None, rcvbuf: int = DEFAULT_RCVBUF,
                 accounting: bool = True, batch_age: float = 1.0) -> None:
        self.netns, self.rcvbuf, self.accounting = netns, rcvbuf, accounting
        self.wait = min(IDLE_WAIT_S, batch_age)
        self.stats = {"new": 0, "destroy": 0, "snapshot": 0, "recovered": 0, "lost": 0,
                      "non_dnat": 0}
        self.seen = SeenIds()
        self._sock: ConntrackSocket | None = None

    @property
    def sock(self) -> ConntrackSocket:
        assert self._sock is not None, "open() first"
        return self._sock

    def open(self) -> None:
        prepare_conntrack(self.netns, self.accounting)
        # Subscribed before the table is dumped, so no connection falls between the two.
        self._sock = ConntrackSocket(self.netns, self.rcvbuf, attach=self.attach())

    def capabilities(self) -> set[str]:
        return {"CAP_NET_ADMIN"}

    def run(self, sink: Sink, stop: threading.Event) -> None:
        try:
            self.start(sink)
            while not stop.is_set():
                sink.turn()
                self.turn(sink)
            self.finish(sink)
        finally:
            self.close()

    # ---- hooks the eBPF source overrides

    def attach(self) -> Callable[[socket.socket], None] | None:
        """What to put on the socket before it is bound (a filter)."""
        return None

    def known(self, zone: int, ct_id: int, start_ns: int) -> bool:
        return self.seen.known(zone, ct_id, start_ns)

    def mark(self, zone: int, ct_id: int, start_ns: int) -> None:
        self.seen.add(zone, ct_id, start_ns)

    def start(self, sink: Sink) -> None:
        n = self.stats["snapshot"] = self.take_table(sink, pb.EVENT_SNAPSHOT)
        log.info("conntrack: subscribed in %s; %d DNAT entries already in the table (stored "
                 "as snapshot, not counted)", self.netns or "this namespace", n)

    def turn(self, sink: Sink) -> None:
        if self.read(sink, self.wait):
            # One datagram per event: let a few milliseconds of them queue up rather
            # than wake for each (at 30,000/s a wake-up per event cost more than
            # decoding it).
            time.sleep(GATHER_S)

    def finish(self, sink: Sink) -> None:
        self.read(sink, 0.0)  # what the kernel queued before we were told to stop

    def overflowed(self, sink: Sink, dropped: int) -> None:
        """The kernel dropped ``dropped`` events: recover what the table still holds.
        Called once the socket is drained, so every NEW event still queued was read
        (and is known) before the dump."""
        recovered = self.take_table(sink, pb.EVENT_RECOVERED)
        self.stats["lost"] += dropped
        self.stats["recovered"] += recovered
        log.warning("conntrack: receive buffer overflowed, kernel dropped %d events; "
                    "recovered %d DNAT decisions from the table", dropped, recovered)
        sink.lost(pb.LostEvents(time_ns=time.time_ns(), source=self.proto, reason="enobufs",
                                count=dropped, recovered=recovered))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    # ---- shared

    def take_table(self, sink: Sink, event: pb.Event) -> int:
        """Dump the table; hand over the DNAT entries not seen before as ``event``."""
        now = time.time_ns()
        rows = []
        for ev in self.sock.dump():
            if not ev.is_dnat or self.known(ev.zone, ev.ct_id, ev.start_ns):
                continue
            self.mark(ev.zone, ev.ct_id, ev.start_ns)
            rows.append(to_decision(ev, event, self.proto, now))
        if rows:
            sink.decisions(rows)
        return len(rows)

    def read(self, sink: Sink, timeout: float) -> int:
        """Everything queued on the socket; how many messages that was."""
        n = dropped = 0
        rows: list[DecisionRow] = []
        for got in self.sock.events(timeout):
            if isinstance(got, Overflow):
                n += 1
                if got.reason == "enobufs":
                    dropped += got.lost
                else:
                    self.lose(sink, got)
                continue
            n += len(got)
            self.decode(got, time.time_ns(), rows)
            if len(rows) >= READ_CHUNK:
                sink.decisions(rows)
                rows = []
        if rows:
            sink.decisions(rows)
        if dropped:
            self.overflowed(sink, dropped)
        return n

    def lose(self, sink: Sink, got: Overflow) -> None:
        self.stats["lost"] += got.lost
        log.error("conntrack: %d events lost (%s)", got.lost, got.reason)
        sink.lost(pb.LostEvents(time_ns=time.time_ns(), source=self.proto, reason=got.reason,
                                count=got.lost))

    def decode(self, values: list[Values], now: int, rows: list[DecisionRow]) -> None:
        """DNAT events of one read as rows (``now``: after the read, so no later than
        the kernel made the entry)."""
        stats, seen, source = self.stats, self.seen, self.proto
        for v in values:
            if not values_dnat(v):
                stats["non_dnat"] += 1  # not rewritten: the reply comes from the VIP
                continue
            if v[0] == "new":
                seen.add(v[9], v[8], now)
                stats["new"] += 1
                rows.append(from_values(v, _NEW, source, now))
            elif v[0] == "destroy":
                seen.forget(v[9], v[8], v[15])
                stats["destroy"] += 1
                rows.append(from_values(v, _DESTROY, source, now))
