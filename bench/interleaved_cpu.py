"""CPU each watcher adds per connection, switched on and off within one flood.

bench/source_cpu.py gives each watcher a flood of its own, seconds apart, and this
machine's speed moves by 2x in steps of about a second (BENCHMARKS.md), so a watcher
that adds a sixth of what `conntrack -E` adds is lost in that noise. Here the watchers
all run through the whole flood, and the script switches which one listens: every
SLICE seconds it drops or adds the multicast memberships of each watcher's ctnetlink
socket, through a duplicate of that socket taken from the watcher's process with
pidfd_getfd (the process itself is untouched and does not notice), in the cycle

    none, conntrack -E, none, listener that keeps nothing, none, natlens

with no listener at all in the "none" slices, so the kernel builds no events there.
natlens comes last: at a paced RATE, conntrack -E slows the sender, which keeps an
absolute schedule and catches up in the slice after (up to a quarter more connections
in it, each cheaper), so that slice is no baseline for the figure that matters; it
falls to the listener's slice instead (until 2026-12-04 it fell to natlens's).
Conntrack's byte counters and timestamps, which the agent switches on by default and
which cost on every packet of every flow, are on only in natlens's slices (unless
ARGS has --no-ct-accounting). A watcher's added CPU per connection is its slice's CPU
per connection less the mean of the two "none" slices around it, which ran at the
machine's speed of that moment.

What is counted, per slice: the whole machine's busy time (source_cpu.busy: exact idle
clock, but read in 10 ms units, so slices are not much shorter than 0.2 s), less this
script's CPU and the watchers' processes, per connection the kernel made in that slice
(the node's nf_conntrack_count). The watchers' processes are read from their exact CPU
clocks and charged to each watcher apart: what it spends above its idle rate (measured
in the slices that are neither its own nor the one after it, when its queue is empty)
goes to the connections of its slices, and its idle rate for the time its slices took,
as if it were always on. For `conntrack -E` that is nearly all its CPU; for natlens in
aggregate mode, which copies nothing to user space, it is the idle rate. natlens counts
only the connections of its own slices here; source_cpu.py is where counts are held to
the kernel's table.

Run: .venv/bin/python bench/interleaved_cpu.py  (root; needs conntrack and bcc)
     FLOODS=40 SLICE=0.2 ANSWER=1 RATE=0 ARGS="--source ebpf --aggregate-only"
     (the defaults: the issue's flood, SYNs at listening endpoints, as fast as one
     sender goes, and the agent's defaults: aggregate mode, with conntrack's byte
     counters and timestamps; ANSWER=0 silences the endpoints, RATE paces the
     flood, ARGS are the agent's)
     ARGS="--source hook" / "--source hook --aggregate-only" / "--source hook --closes"
     (the hook source: this script detaches and attaches its links to switch it, and
     switches its close filter's socket, with --closes, like the others)
     ANSWER=0 RATE=30000 ARGS="--source netlink --no-ct-accounting" .venv/bin/python ...
     (the 30,000/s figures of decision mode and of the netlink source: their runs in
     BENCHMARKS.md are without byte counters, like the conntrack -E beside them)
"""

from __future__ import annotations

import ctypes
import os
import random
import select
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import harness as h  # bench/harness.py, beside this script

from natlens import netns
from natlens.agent.sources.ebpf_filter import pin_dir
from natlens.lab import topology
from natlens.lab.scenario import load_scenario

FLOODS = int(os.environ.get("FLOODS", "40"))
SLICE = float(os.environ.get("SLICE", "0.2"))
ANSWER = os.environ.get("ANSWER", "1") == "1"
RATE = int(os.environ.get("RATE", "0"))  # SYNs per second; 0: as fast as one sender goes
ARGS = os.environ.get("ARGS", "--source ebpf --aggregate-only").split()
HOOK = "hook" in ARGS  # --source hook: switched by its links, not a socket
# NOOP=1 (with a hook ARGS): natlens's slices attach a netfilter program that only
# returns NF_ACCEPT, at the hook's places, instead of the hook: the method's own bias
# plus what the kernel pays to call any netfilter program, against which the hook's
# figure is read (an A/A run when the calls cost nothing).
NOOP = os.environ.get("NOOP", "0") == "1"
NONE, CT, NAT, FLOOR = "none", "conntrack -E", "natlens", h.FLOOR
COL = "collector"  # read apart: not a watcher, not the node's cost
CYCLE = [NONE, CT, NONE, FLOOR, NONE, NAT]
SOL_NETLINK, ADD, DROP = 270, 1, 2
NETFILTER = "/proc/sys/net/netfilter"
NETLINK_NETFILTER = 12
SYS_PIDFD_GETFD = 438  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


def groups_of(mask: int) -> list[int]:
    """Multicast group numbers (1-based) set in a netlink bind mask."""
    return [g + 1 for g in range(32) if mask >> g & 1]


def subscribed_socket(pid: int, node: str) -> tuple[socket.socket, list[int]]:
    """A duplicate of ``pid``'s ctnetlink socket in ``node`` that has groups bound, and
    those groups: the same kernel socket, so memberships set on it are the process's."""
    inodes = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            inodes[int(link[8:-1])] = int(fd)
    with netns.entered(node), open("/proc/thread-self/net/netlink") as f:
        head = f.readline().split()
        rows = [line.split() for line in f]
    eth, grp, ino = head.index("Eth"), head.index("Groups"), head.index("Inode")
    found = [(inodes[int(r[ino])], int(r[grp], 16)) for r in rows
             if int(r[eth]) == NETLINK_NETFILTER and int(r[ino]) in inodes and int(r[grp], 16)]
    if len(found) != 1:
        raise RuntimeError(f"process {pid}: {len(found)} subscribed ctnetlink sockets in "
                           f"{node}, expected 1")
    pidfd = os.pidfd_open(pid)
    try:
        dup = _libc.syscall(SYS_PIDFD_GETFD, pidfd, found[0][0], 0)
    finally:
        os.close(pidfd)
    if dup < 0:
        raise OSError(ctypes.get_errno(), f"pidfd_getfd on process {pid}")
    return socket.socket(fileno=dup), groups_of(found[0][1])


class HookToggle:
    """The hook source's netfilter links, detached and attached again from this process
    (a program instance of its own on the agent's pinned maps): the agent keeps reading
    the same counters and ring and does not notice."""

    def __init__(self, pin: str, node: str, records: bool, closes: bool) -> None:
        from natlens.agent.sources.hook_loader import HookProgram

        self.prog = HookProgram(pin, node, records, closes=closes)  # the agent's mode
        self.attached = True

    def __call__(self, on: bool) -> None:
        if on != self.attached:
            self.prog.attach() if on else self.prog.detach()
            self.attached = on


class NoopToggle:
    """Links of a netfilter program that accepts every packet and does nothing else, at
    the hook source's hooks and priorities, attached and detached like HookToggle."""

    def __init__(self, node: str) -> None:
        from natlens.agent.sources.hook_loader import BPF_NETFILTER, BPF_PROG_TYPE_NETFILTER

        self.node, self.links = node, []
        insns = ctypes.create_string_buffer(bytes.fromhex("b700000001000000" "9500000000000000"))
        lic = ctypes.create_string_buffer(b"GPL")
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("=IIQQ", attr, 0, BPF_PROG_TYPE_NETFILTER, 2,
                         ctypes.addressof(insns), ctypes.addressof(lic))
        struct.pack_into("=I", attr, 68, BPF_NETFILTER)  # expected_attach_type
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.syscall(321, 5, attr, ctypes.sizeof(attr))  # BPF_PROG_LOAD
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_PROG_LOAD of the no-op program")

    def __call__(self, on: bool) -> None:
        from natlens.agent.sources.hook_loader import HOOKS, link_before_confirm

        if on and not self.links:
            with netns.entered(self.node):
                self.links = [link_before_confirm(self.fd, pf, hook, first)
                              for _, pf, hook, first in HOOKS]
        elif not on:
            for fd in self.links:
                os.close(fd)
            self.links = []


class Switch:
    """Which watcher listens: memberships added to one socket, dropped from the rest
    (and the hook's links attached or detached, ``toggles``); and conntrack's byte
    counters and timestamps on only while natlens listens, if it runs with them
    (written through ``sysctls``, files opened in the node)."""

    def __init__(self, socks: dict[str, tuple[socket.socket, list[int]]],
                 sysctls: list[int],
                 toggles: dict[str, HookToggle | NoopToggle] | None = None) -> None:
        self.socks, self.sysctls = socks, sysctls
        self.toggles = toggles or {}
        self.on: set[str] = set(socks)

    def listen(self, who: str) -> None:
        for fd in self.sysctls:
            os.pwrite(fd, b"1" if who == NAT else b"0", 0)
        for name, toggle in self.toggles.items():
            toggle(name == who)
        for name, (s, groups) in self.socks.items():
            want = name == who
            if want != (name in self.on):
                for g in groups:
                    s.setsockopt(SOL_NETLINK, ADD if want else DROP, g)
                (self.on.add if want else self.on.discard)(name)


@dataclass
class Slice:
    who: str
    secs: float
    conns: int
    kernel: float        # whole machine less this script and the watchers' processes
    procs: dict[str, float] = field(default_factory=dict)  # each watcher's process CPU
    kept: bool = True    # False: the sender starting, or the flood ending inside it


class Edge(NamedTuple):
    """What is read at a slice's edge, all together, before switching."""

    t: float                 # monotonic seconds
    conns: int               # the node's conntrack entries
    busy: float              # the machine's busy CPU less this script's
    procs: dict[str, float]  # each watcher's process CPU


def edge(count_fd: int, pids: dict[str, list[int]]) -> Edge:
    return Edge(time.monotonic(), int(os.pread(count_fd, 32, 0)),
                h.busy() - time.process_time(),
                {w: sum(h.proc_cpu(p) for p in ps) for w, ps in pids.items()})


def flood(pod: str, packets: Path, switch: Switch, count_fd: int, pids: dict[str, list[int]],
          phase: int) -> list[Slice]:
    """One flood with the watchers switched every SLICE seconds, starting the cycle at
    ``phase``; the first slice (the sender starting) and the last (cut short) are marked
    not ``kept``."""
    switch.listen(NONE)
    sender = h.Flooder(pod, packets, RATE).proc  # started and ready
    assert sender.stdin and sender.stdout
    out: list[Slice] = []
    who = CYCLE[phase % len(CYCLE)]
    switch.listen(who)
    last = edge(count_fd, pids)
    sender.stdin.write("go\n")
    sender.stdin.flush()
    done = False
    while not done:
        done = bool(select.select([sender.stdout], [], [], last.t + SLICE - time.monotonic())[0])
        now = edge(count_fd, pids)
        phase += 1
        nxt = CYCLE[phase % len(CYCLE)]
        switch.listen(nxt)
        procs = {w: now.procs[w] - last.procs[w] for w in pids}
        out.append(Slice(who, now.t - last.t, now.conns - last.conns,
                         now.busy - last.busy - sum(procs.values()), procs))
        last, who = now, nxt
    switch.listen(NONE)
    sender.wait(timeout=60)
    out[0].kept = out[-1].kept = False
    return out


@dataclass
class Added:
    """What one watcher adds per connection, in microseconds."""

    kernel: list[float]  # per slice of its own: less the mean of the two around it
    before: list[float]  # less the slice before alone
    after: list[float]   # less the slice after alone (what its work left over would raise)
    own: float           # its processes


def added(slices: list[list[Slice]], who: str) -> Added:
    """What ``who`` adds: the kernel's part per slice of its own, against the "none"
    slices around it, and its processes' part as described above."""
    out = Added([], [], [], 0.0)
    busy = idle = idle_secs = on_secs = 0.0
    conns = 0
    for every in slices:
        fl = [s for s in every if s.kept]
        for i, s in enumerate(fl):
            p = s.procs.get(who, 0.0)
            busy += p
            if s.who == who:
                on_secs += s.secs
                conns += s.conns
                if (0 < i < len(fl) - 1 and fl[i - 1].who == fl[i + 1].who == NONE
                        and min(fl[i - 1].conns, s.conns, fl[i + 1].conns) > 0):
                    pre, mine, post = (x.kernel / x.conns * 1e6 for x in fl[i - 1:i + 2])
                    out.kernel.append(mine - (pre + post) / 2)
                    out.before.append(mine - pre)
                    out.after.append(mine - post)
            elif not (i > 0 and fl[i - 1].who == who):
                idle += p
                idle_secs += s.secs
    rate = idle / idle_secs if idle_secs else 0.0
    total_secs = sum(s.secs for fl in slices for s in fl if s.kept)
    if conns:
        out.own = (busy - rate * total_secs + rate * on_secs) / conns * 1e6
    return out


def interval(num: list[float], den: list[float], own_n: float, own_d: float,
             draws: int = 2000) -> tuple[float, float]:
    """5th and 95th percentiles of (median num + own_n) / (median den + own_d) with the
    slices of each drawn with replacement."""
    rng = random.Random(0)
    r = sorted((statistics.median(rng.choices(num, k=len(num))) + own_n)
               / (statistics.median(rng.choices(den, k=len(den))) + own_d)
               for _ in range(draws))
    return r[len(r) // 20], r[len(r) * 19 // 20]


def report(slices: list[list[Slice]], counted: dict[str, int], lost: int) -> None:
    flat = [s for fl in slices for s in fl]
    print(f"{FLOODS} floods of {h.FLOOD:,} SYNs ({'answered' if ANSWER else 'unanswered'})"
          f"{f' at {RATE:,}/s' if RATE else ''}, slices of {SLICE} s; natlens: "
          f"{' '.join(ARGS)}, which reported {lost} events lost")
    for who in (NONE, *(w for w in CYCLE if w != NONE)):
        mine = [s for s in flat if s.who == who and s.kept]
        made = sum(s.conns for s in flat if s.who == who)
        rate = statistics.median(s.conns / s.secs for s in mine)
        print(f"  {who}: {len(mine)} slices, {rate:,.0f} connections/s (median)" + (
                  f"; it saw {counted[who]:,} NEW events of the {made:,} connections made "
                  "while it listened (first and last slices included)" if who in counted
                  else ""))
    ct = added(slices, CT)
    ct_total = statistics.median(ct.kernel) + ct.own
    for who in (CT, NAT, FLOOR):
        a = ct if who == CT else added(slices, who)
        med = statistics.median(a.kernel)
        line = (f"  {who}: adds {med + a.own:.2f} us per connection: kernel {med:.2f} us "
                f"(median of {len(a.kernel)} slices, mean {statistics.mean(a.kernel):.2f}; "
                f"against the slice before alone {statistics.median(a.before):.2f}, after "
                f"alone {statistics.median(a.after):.2f}), its processes {a.own:.2f} us")
        if who != CT:
            lo, hi = interval(a.kernel, ct.kernel, a.own, ct.own)
            line += (f"; ratio to {CT} {(med + a.own) / ct_total:.3f} (90% interval "
                     f"{lo:.3f}-{hi:.3f})")
        print(line)
    col = sum(s.procs.get(COL, 0.0) for fl in slices for s in fl)
    if counted.get(NAT):
        print(f"  the collector, apart (it runs elsewhere in a cluster): "
              f"{col / counted[NAT] * 1e6:.2f} us per decision it stored")


def main() -> None:
    st = topology.up(load_scenario(h.SEED), str(h.SEED))
    pod, node = st.pods[h.CLIENT], st.nodes["k8s-node2"]
    slices: list[list[Slice]] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            if not ANSWER:
                h.silence_endpoints(st)
            packets = h.build_flood(pod, tmp)
            h.clear(node)
            ct_out = tmp / "ct.txt"
            ct = h.conntrack_events(node, ct_out, [])
            nl = h.Natlens(node, tmp, "interleaved", ARGS)
            floor = h.floor_listener(node)
            try:
                nl.watching()
                time.sleep(0.5)
                with netns.entered(node):
                    count_fd = os.open(f"{NETFILTER}/nf_conntrack_count", os.O_RDONLY)
                    # The hook switches conntrack's accounting on only with --closes.
                    accounting = "--no-ct-accounting" not in ARGS and (
                        not HOOK or "--closes" in ARGS)
                    sysctls = [] if not accounting else [
                        os.open(f"{NETFILTER}/nf_conntrack_{k}", os.O_WRONLY)
                        for k in ("acct", "timestamp")]
                socks = {CT: subscribed_socket(ct.pid, node),
                         FLOOR: (floor.sock, groups_of(floor.sock.getsockname()[1]))}
                toggles: dict[str, HookToggle | NoopToggle] = {}
                if HOOK and NOOP:  # the hook stays detached; a no-op program's links
                    HookToggle(os.path.join(pin_dir(str(nl.bpffs), "n", node), "hook"),
                               node, "--aggregate-only" not in ARGS, False)(False)
                    toggles[NAT] = NoopToggle(node)
                elif HOOK:  # its links; and its close filter's socket, with --closes
                    toggles[NAT] = HookToggle(
                        os.path.join(pin_dir(str(nl.bpffs), "n", node), "hook"), node,
                        "--aggregate-only" not in ARGS, "--closes" in ARGS)
                if not HOOK or "--closes" in ARGS:
                    socks[NAT] = subscribed_socket(nl.ag.pid, node)
                switch = Switch(socks, sysctls, toggles)
                switch.listen(NONE)
                # The node's cost is the kernel's and the agent's: the collector runs
                # elsewhere in a cluster, so its CPU is read apart (and kept out of the
                # kernel's part like every watcher process).
                pids = {CT: [ct.pid], NAT: [nl.ag.pid], COL: [nl.col.pid]}
                for i in range(FLOODS):
                    h.clear(node)  # nobody listens: the flush makes no events
                    fl = flood(pod, packets, switch, count_fd, pids, i)
                    slices.append(fl)
                    print(f"flood {i}: " + ", ".join(
                        f"{s.who} {s.conns} in {s.secs:.2f}s" for s in fl), flush=True)
                counted = {CT: ct_out.read_text().count("[NEW]"), NAT: h.settle(nl.counted)}
                lost = nl.lost()
            finally:
                floor.close()
                ct.terminate()
                ct.wait()
                nl.stop()
    finally:
        topology.down(st)
    report(slices, counted, lost)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
