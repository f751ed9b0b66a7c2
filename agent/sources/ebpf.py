"""The eBPF source: the netlink source with ``ebpf_filter.c`` on its socket.

The kernel runs the filter on every conntrack event before it is queued, so events
that are not DNAT decisions cost no copy and no wake-up, and in aggregate mode none
does: the counts live in per-CPU maps pinned under bpffs, read every
``counters_interval`` and shipped as running totals. With ``decisions`` the filter also
writes each DNAT event to a ring buffer, drained here in bulk. Pinned maps outlive the
agent, so a restarted agent (kill -9 included) carries on from the same totals, and
its table dump ships what the kernel-side seen set does not know as recovered.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from natlens.agent.decode.counters import CounterTracker
from natlens.agent.sources.conntrack import DEFAULT_RCVBUF, Overflow
from natlens.agent.sources.ebpf_filter import EbpfFilter, pin_dir
from natlens.agent.sources.netlink import NetlinkSource
from natlens.agent.sources.stage import Sink
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow

log = logging.getLogger("natlens.agent")


def outlives_the_agent(mountpoint: str) -> bool:
    """Whether a mount this process made stays when it exits: it does when the mount
    namespace is the host's (PID 1's, and this is not PID 1 of a container); where PID
    1's namespace cannot be read (no CAP_SYS_PTRACE), when the mount propagates."""
    try:
        ours = os.stat("/proc/self/ns/mnt").st_ino
        init = os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        return propagates(mountpoint)
    return ours == init and os.getpid() != 1


def propagates(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether the mount at ``mountpoint`` is shared with other mount namespaces (the
    host's): only then does it outlive this process. Under ``ip netns exec`` (or in a
    container) new mounts are private or slave, and go with the process."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return True  # cannot tell: say nothing
    fields = [ln.split(" - ", 1)[0].split() for ln in lines]
    mine = [f for f in fields if len(f) > 4 and f[4] == mountpoint]
    return bool(mine) and any(o.startswith("shared:") for o in mine[-1][6:])


class EbpfSource(NetlinkSource):
    name = "ebpf"
    proto = pb.SOURCE_EBPF

    def __init__(self, node: str, netns: str | None, pin_root: str, decisions: bool = False,
                 sample: int = 1, counters_interval: float = 5.0,
                 rcvbuf: int = DEFAULT_RCVBUF, accounting: bool = True,
                 batch_age: float = 1.0) -> None:
        super().__init__(netns, rcvbuf, accounting, batch_age)
        self.pin = pin_dir(pin_root, node, netns)
        self.decisions, self.sample = decisions, sample
        self.counters_interval = counters_interval
        self._filter: EbpfFilter | None = None
        self._rows: list[DecisionRow] = []  # the ring's callback appends to it
        self._next_counters = 0.0

    @property
    def filter(self) -> EbpfFilter:
        assert self._filter is not None, "open() first"
        return self._filter

    def open(self) -> None:
        """Load the filter (BpfUnavailable says why not), then the socket with it."""
        f = self._filter = EbpfFilter(self.pin, self.decisions, self.sample)
        if f.mounted:
            log.info("bpffs: mounted at %s for the pinned maps", f.mounted)
            if not outlives_the_agent(f.mounted):
                log.warning("bpffs: %s was mounted in this process's own mount namespace "
                            "(as under ip netns exec): the pinned counters go with it and "
                            "will not carry over to a restarted agent; mount bpffs there "
                            "on the host (or run the agent in the host's mount namespace "
                            "with --netns)", f.mounted)
        log.info("source ebpf: eBPF filter (%s mode%s), maps %s in %s, epoch %s",
                 "decision" if self.decisions else "aggregate",
                 f", 1 in {self.sample} decisions" if self.sample > 1 else "",
                 "created" if f.fresh else "reused", f.pin, f.epoch)
        try:
            super().open()
            if self.decisions:
                f.open_decisions(self._rows.append)
        except BaseException:
            f.close()
            raise
        self.tracker = CounterTracker(f.epoch, self.proto, time.time_ns())
        self._known = f.seen_checker()

    def capabilities(self) -> set[str]:
        return {"CAP_NET_ADMIN", "CAP_BPF"}  # bpf() checks CAP_BPF even for map reads

    def attach(self) -> Callable[[socket.socket], None]:
        return self.filter.attach

    def known(self, zone: int, ct_id: int, start_ns: int) -> bool:
        return self._known(zone, ct_id, start_ns)

    def mark(self, zone: int, ct_id: int, start_ns: int) -> None:
        self.filter.mark_seen(zone, ct_id, start_ns)

    def start(self, sink: Sink) -> None:
        if self.filter.fresh:
            super().start(sink)
            return
        # Restarted on existing maps: what the table holds and the kernel-side seen set
        # lacks was decided while no agent ran. Counted, marked recovered.
        n = self.stats["recovered"] = self.take_table(sink, pb.EVENT_RECOVERED)
        log.info("conntrack: subscribed in %s; recovered %d DNAT decisions made while the "
                 "agent was down", self.netns or "this namespace", n)

    def turn(self, sink: Sink) -> None:
        if self.decisions:
            self.filter.poll(self.wait)
            self._take_rows(sink)
            self.read(sink, 0.0)
        else:
            super().turn(sink)  # the socket receives nothing: it wakes once a wait
        if time.monotonic() >= self._next_counters:
            self.ship_counters(sink)
            self._next_counters = time.monotonic() + self.counters_interval

    def finish(self, sink: Sink) -> None:
        super().finish(sink)
        self.filter.poll(0.0)
        self._take_rows(sink)
        self.ship_counters(sink)
        self.stats.update({f"bpf_{k}": v for k, v in self.filter.read_stats().items()})

    def overflowed(self, sink: Sink, dropped: int) -> None:
        # Not expected: the filter hands the socket nothing. The kernel counters hold
        # these events already; a recovery dump would count them twice.
        self.lose(sink, Overflow(dropped))

    def close(self) -> None:
        super().close()
        if self._filter is not None:
            self._filter.close()

    def ship_counters(self, sink: Sink) -> None:
        """Kernel counters changed since the last read, and the kernel's losses."""
        now = time.time_ns()
        for d in self.tracker.deltas(self.filter.read_counters(), now):
            sink.counter(d)
        for lost in self.tracker.losses(self.filter.read_losses(), now):
            sink.lost(lost)

    def _take_rows(self, sink: Sink) -> None:
        """The rows one poll of the ring decoded, handed over in one call."""
        rows = self._rows
        if rows:
            destroyed = sum(1 for r in rows if r.event == pb.EVENT_DESTROY)
            self.stats["destroy"] += destroyed
            self.stats["new"] += len(rows) - destroyed
            sink.decisions(list(rows))
            rows.clear()
