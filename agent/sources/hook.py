"""The hook source: a BPF netfilter program counts and records each DNAT decision.

The program (hook.bpf.c, loaded by hook_loader.py) runs in the node's namespace just
before conntrack confirms a new entry, so it sees every decision once, whether or not
anyone listens to conntrack events (``nf_conntrack_events=0`` included), and costs the
kernel no netlink message. Its link and maps are pinned: while no agent runs the kernel
keeps counting, and keeps a record per connection in the ring up to its size (past it,
each record not kept is counted as a ring-overflow loss). This loop drains the ring in
bulk on a fixed beat and ships the counters as running totals, like the eBPF source.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from natlens import netns
from natlens.agent.decode.counters import CounterTracker
from natlens.agent.decode.ctnetlink import NETLINK_NETFILTER, NFNLGRP_CONNTRACK_DESTROY
from natlens.agent.decode.hook_record import Addresses, chunk
from natlens.agent.sources.conntrack import enable_accounting, events_disabled
from natlens.agent.sources.ebpf import outlives_the_agent
from natlens.agent.sources.ebpf_filter import SO_ATTACH_BPF, boot_offset_ns, pin_dir
from natlens.agent.sources.hook_loader import HookProgram
from natlens.agent.sources.hook_ring import Ring
from natlens.agent.sources.stage import Sink
from natlens.proto import natlens_pb2 as pb

log = logging.getLogger("natlens.agent")

POLL_S = 0.05         # the ring holds 139,810 records: at 50 ms a beat, 2.7 million a second
IDLE_S = 1.0          # the beat of a quiet ring, and with --aggregate-only (no --closes)
TAKE = 65_536         # records per take, so a full ring becomes a few batches


def hook_pin(root: str, node: str, netns: str | None) -> str:
    """The hook's pins: a folder of the node's pin directory (the eBPF source's maps,
    of another layout, sit beside it)."""
    return os.path.join(pin_dir(root, node, netns), "hook")


class HookSource:
    name = "hook"
    proto = pb.SOURCE_EBPF  # counted in the kernel, like the socket filter's records

    def __init__(self, node: str, netns: str | None, pin_root: str, records: bool = True,
                 sample: int = 1, counters_interval: float = 5.0, batch_age: float = 1.0,
                 ring_bytes: int | None = None, closes: bool = False,
                 accounting: bool = True) -> None:
        """``closes``: also read DESTROY events (bytes, packets, durations per endpoint,
        and each record's end) through the close filter; ``accounting``: switch on
        conntrack's byte counters and timestamps for them."""
        self.node, self.netns = node, netns
        self.pin = hook_pin(pin_root, node, netns)
        self.records, self.sample, self.ring_bytes = records, sample, ring_bytes
        self.closes, self.accounting = closes, accounting
        self._close_sock: socket.socket | None = None
        self.counters_interval = counters_interval
        # The beat: 50 ms while records come; doubling to the idle beat while the ring
        # is quiet (a quiet node's agent then wakes once a second), and always the idle
        # beat with counts only, whose ring stays empty (at 50 ms its beats were most of
        # the agent's cost at 15,000/s).
        self.idle_wait = min(batch_age, counters_interval, IDLE_S)
        self.wait = min(POLL_S, batch_age) if records or closes else self.idle_wait
        self.stats = {"new": 0, "destroy": 0, "waiting_at_start": 0}
        self._prog: HookProgram | None = None
        self._ring: Ring | None = None
        self._names = Addresses()

    @property
    def prog(self) -> HookProgram:
        assert self._prog is not None, "open() first"
        return self._prog

    def open(self) -> None:
        p = self._prog = HookProgram(self.pin, self.netns, self.records, self.sample,
                                     self.ring_bytes, self.closes)
        if p.mounted and not outlives_the_agent(p.mounted):
            log.warning("bpffs: %s was mounted in this process's own mount namespace: the "
                        "pinned hook goes with it; mount bpffs there on the host (or run "
                        "the agent in the host's mount namespace with --netns)", p.mounted)
        try:
            self._ring = Ring(p.fds["records"], p.ring_bytes)
            if self.closes:
                self._close_sock = self._subscribe_closes(p.closes_fd)
        except BaseException:
            self.close()
            raise
        waiting = self.stats["waiting_at_start"] = self._ring.pending()
        log.info("source hook: BPF netfilter program (%s, %s), links %s, maps %s in %s, "
                 "epoch %s%s", "per-connection records" if self.records else "counts only",
                 f"1 in {self.sample} recorded" if self.sample > 1 else "all recorded"
                 if self.records else "aggregate", p.links,
                 "created" if p.fresh else "reused", p.pin, p.epoch,
                 f"; {waiting} records made while no agent ran" if waiting else "")
        if self.closes:
            log.info("source hook: closes read from conntrack DESTROY events by a socket "
                     "filter (bytes, packets, durations)")
        self.tracker = CounterTracker(p.epoch, self.proto, time.time_ns())

    def _subscribe_closes(self, prog_fd: int) -> socket.socket:
        """A ctnetlink socket for DESTROY events with the close filter on it before it
        is bound: the kernel runs the filter on each event and queues nothing."""
        if self.accounting:
            changed = enable_accounting(self.netns)
            if changed:
                log.info("conntrack: switched on %s", ", ".join(changed))
        if events_disabled(self.netns):
            log.warning("conntrack: events are disabled in %s (net.netfilter."
                        "nf_conntrack_events=0): no closes, so no bytes or durations; "
                        "decisions are counted and recorded all the same", self.netns
                        or "this namespace")
        with netns.entered(self.netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 NETLINK_NETFILTER)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)
                sock.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
            except BaseException:
                sock.close()
                raise
        return sock

    def capabilities(self) -> set[str]:
        # Map reads need CAP_BPF (the ring is already mapped); the rules, CAP_NET_ADMIN.
        return {"CAP_NET_ADMIN", "CAP_BPF"}

    def run(self, sink: Sink, stop: threading.Event) -> None:
        try:
            due, wait = 0.0, self.wait
            while not stop.is_set():
                sink.turn()
                taken = self.drain(sink)
                if time.monotonic() >= due:
                    self.ship_counters(sink)
                    due = time.monotonic() + self.counters_interval
                wait = self.wait if taken else min(wait * 2, self.idle_wait)
                stop.wait(wait)
            self.drain(sink)
            self.ship_counters(sink)
            self.stats.update({f"bpf_{k}": v for k, v in self.prog.read_stats().items()})
        finally:
            self.close()

    def drain(self, sink: Sink) -> int:
        """The whole records in the ring, handed on in one call per take. One take a
        beat unless it came back full: under a flood the ring always holds a record
        being written, and taking again at once would pay a take's fixed cost for a
        handful of records (a take of 14 records cost 37 us each; one a beat, 1.4)."""
        ring = self._ring
        assert ring is not None
        total = 0
        offset = boot_offset_ns()  # the wall clock may have been stepped
        while True:
            entries, position = ring.take(TAKE)
            if not len(entries):
                return total
            sink.columns(chunk(entries, offset, self._names))
            ring.commit(position)
            total += len(entries)
            closes = int(entries["kind"].sum())
            self.stats["destroy"] += closes
            self.stats["new"] += len(entries) - closes
            if len(entries) < TAKE:
                return total

    def ship_counters(self, sink: Sink) -> None:
        """Kernel counters changed since the last read, and the kernel's losses."""
        now = time.time_ns()
        for d in self.tracker.deltas(self.prog.read_counters(), now):
            sink.counter(d)
        for lost in self.tracker.losses(self.prog.read_losses(), now):
            sink.lost(lost)

    def close(self) -> None:
        if self._close_sock is not None:
            self._close_sock.close()
            self._close_sock = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._prog is not None:
            self._prog.close()
