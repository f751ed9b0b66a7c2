"""CPU per DNAT event of each natlens source against `conntrack -E`, on the same flood.

In the seed lab, bench/synflood.py sends FLOOD SYNs from front-tomcat to the ClusterIP
at RATE per second (each a new conntrack entry and a DNAT decision on k8s-node2). The
endpoints drop the SYNs unanswered (an nft rule in their own namespaces), so the flood
costs the node one DNAT decision per connection and little else (the no-watcher line
prints its CPU per SYN; ANSWER=1 gives the same with replies), which leaves room for a
watcher at 30,000/s on two cores. A run with no watcher is the reference subtracted
from the others; every window, the reference's included, ends TAIL seconds after the
flood. Each round also
floods under a ctnetlink listener whose classic BPF filter keeps nothing: what the
kernel spends on conntrack events for any listener, the floor under every watcher.

CPU is measured exactly, not sampled. With tick-based accounting (this kernel:
CONFIG_TICK_CPU_ACCOUNTING, HZ=250) the user and system columns of /proc/stat are
4 ms samples, and a flood paced in 1 ms bursts lands on or between the ticks as a
whole (by hand, the same paced flood twice: 1.8 us and 35 us per SYN). The idle column is the NO_HZ
idle clock, exact, so whole-machine busy time is wall time x CPUs minus idle and
iowait. The agent's and the collector's CPU come from their process CPU clocks
(clock_gettime on the process's CPUCLOCK_SCHED: the scheduler's exact runtime).
Each configuration runs RUNS times in a shuffled order; medians and ratios to
`conntrack -E` (and to the netlink source, when it runs) are printed, with a 90%
interval from resampling the rounds (this machine's speed moves 2x within seconds).
Run: .venv/bin/python bench/source_cpu.py  (root; needs conntrack and bcc)
     RATE=0 ANSWER=1 CONFIGS="hook,hook --closes,hook --aggregate-only" .venv/bin/python ...
       (the hook source; with --closes it switches on conntrack's accounting too)
     RATE=0 CONFIGS="ebpf aggregate" .venv/bin/python bench/source_cpu.py
       (as fast as one sender goes: about 60,000 SYNs/s here)
     RATE=0 ANSWER=1 RUNS=12 CONFIGS="ebpf aggregate" .venv/bin/python bench/source_cpu.py
       (the issue's flood: SYNs at listening endpoints, 20,000-30,000/s here)
     RATE=5000 ANSWER=1 CONFIGS=netlink,pcap .venv/bin/python bench/source_cpu.py
       (the endpoints answer, so the packet source sees whole handshakes)
     BEFORE=67d10bd CONFIGS=netlink .venv/bin/python bench/source_cpu.py
       (also the agent and collector of that commit, in the same rounds)
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import (
    ANSWER,
    CLIENT,
    FLOOD,
    FLOOR,
    Flooder,
    Natlens,
    Window,
    build_flood,
    clear,
    conntrack_events,
    floor_listener,
    proc_cpu,
    seed_lab,
    settle,
    silence_endpoints,
    table_count,
    tree_at,
)

RUNS = int(os.environ.get("RUNS", "3"))
# Byte counters and timestamps (on by default) cost on every packet of every flow, not
# per event; they are off here like for the conntrack -E run, and measured on their own.
CONFIGS = {"hook": ["--source", "hook"],
           "hook --closes": ["--source", "hook", "--closes"],
           "hook --aggregate-only": ["--source", "hook", "--aggregate-only"],
           "ebpf aggregate": ["--source", "ebpf", "--aggregate-only", "--no-ct-accounting"],
           "ebpf aggregate + accounting": ["--source", "ebpf", "--aggregate-only"],
           "ebpf --decisions": ["--source", "ebpf", "--decisions", "--no-ct-accounting"],
           "netlink": ["--source", "netlink", "--no-ct-accounting"],
           "pcap": ["--source", "pcap", "--no-ct-accounting"]}
DEFAULT = "ebpf aggregate,ebpf aggregate + accounting,ebpf --decisions,netlink"
CONFIGS = {k: v for k, v in CONFIGS.items()
           if k in os.environ.get("CONFIGS", DEFAULT).split(",")}
# A commit: every configuration also runs with the agent and collector as they were
# there, interleaved in the same rounds (this machine's speed drifts between runs by
# more than most changes buy).
BEFORE = os.environ.get("BEFORE", "")


@dataclass
class Run:
    """One flood under one watcher (or none)."""

    cpu: float           # whole machine, over the window
    rate: float          # the flood's SYNs per second
    flood: float = 0.0   # the sender's CPU: the kernel's per-SYN path, events included
    own: float = 0.0     # the watcher's processes (conntrack; agent + collector)
    agent: float = 0.0
    collector: float = 0.0
    counted: int = 0     # NEW events seen, or decisions counted
    lost: int = 0        # losses the agent reported
    made: int = 0        # entries the flood made in the node's table


def run_baseline(pod: str, node: str, packets: Path) -> Run:
    clear(node)
    fl = Flooder(pod, packets)
    w = Window()
    rate, flood = fl.run()
    w.flood_done()
    return Run(w.cpu(), rate, flood, made=FLOOD)


def run_conntrack(pod: str, node: str, tmp: Path, packets: Path, events: list[str]) -> Run:
    """`conntrack -E` with ``events`` (e.g. ``-e NEW``)."""
    out = tmp / "ct.txt"
    clear(node)
    p = conntrack_events(node, out, events)
    fl = Flooder(pod, packets)
    time.sleep(0.5)
    w, c0 = Window(), proc_cpu(p.pid)  # `ip netns exec` execs conntrack: the same pid
    rate, flood = fl.run()
    w.flood_done()
    n = settle(lambda: out.read_text().count("[NEW]"))
    cpu, c1 = w.cpu(), proc_cpu(p.pid)
    p.terminate()
    p.wait()
    return Run(cpu, rate, flood, c1 - c0, counted=n, made=FLOOD)


def run_floor(pod: str, node: str, packets: Path) -> Run:
    """The kernel's cost of conntrack events for any listener (``floor_listener``).
    No watcher can cost less than this."""
    clear(node)
    src = floor_listener(node)
    try:
        fl = Flooder(pod, packets)
        w = Window()
        rate, flood = fl.run()
        w.flood_done()
        return Run(w.cpu(), rate, flood, made=FLOOD)
    finally:
        src.close()


def run_agent(pod: str, node: str, tmp: Path, packets: Path, name: str,
              args: list[str], tree: Path | None = None) -> Run:
    clear(node)
    nl = Natlens(node, tmp, name, args, tree)
    nl.watching()
    ag, col, logs, db, counted = nl.ag, nl.col, nl.logs, nl.db, nl.counted
    fl = Flooder(pod, packets)
    time.sleep(1)
    w, a0, c0 = Window(), proc_cpu(ag.pid), proc_cpu(col.pid)
    rate, flood = fl.run()
    w.flood_done()
    if ANSWER:  # a reset flow leaves the table 10 s after its RST
        made = table_count(node)
    n = settle(counted)
    cpu, a1, c1 = w.cpu(), proc_cpu(ag.pid), proc_cpu(col.pid)
    if not ANSWER:  # unanswered SYNs stay 120 s: counted outside the window
        made = table_count(node)
    nl.stop()
    n = counted()  # after the agent's last shipment
    if n != made:
        print(f"  {' '.join(args)}: counted {n}, the kernel's table held {made} entries "
              "right after the flood; the logs' warnings and errors:", flush=True)
        for log in logs:
            for line in log.read_text().splitlines():
                if " WARNING " in line or " ERROR " in line or "stopped:" in line:
                    print(f"    {log.stem}: {line}", flush=True)
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT source, reason, SUM(count) FROM lost_events "
                             "GROUP BY 1, 2").fetchall()
        print(f"    lost_events: {rows}", flush=True)
    return Run(cpu, rate, flood, a1 - a0 + c1 - c0, a1 - a0, c1 - c0, n, nl.lost(), made)


def main() -> None:
    base: list[Run] = []
    refs: dict[str, list[Run]] = {"conntrack -E -e NEW": [], "conntrack -E": [], FLOOR: []}
    configs: dict[str, tuple[list[str], str]] = {k: (v, "") for k, v in CONFIGS.items()}
    if BEFORE:
        configs.update({f"{k} @{BEFORE}": (v, BEFORE) for k, v in CONFIGS.items()})
    res: dict[str, list[Run]] = {k: [] for k in configs}
    with seed_lab() as st, tempfile.TemporaryDirectory() as d:
        pod, node = st.pods[CLIENT], st.nodes["k8s-node2"]
        tmp = Path(d)
        trees = {BEFORE: tree_at(BEFORE, tmp)} if BEFORE else {}
        if not ANSWER:
            silence_endpoints(st)
        packets = build_flood(pod, tmp)
        for i in range(RUNS):
            base.append(run_baseline(pod, node, packets))
            refs["conntrack -E -e NEW"].append(
                run_conntrack(pod, node, tmp, packets, ["-e", "NEW"]))
            refs["conntrack -E"].append(run_conntrack(pod, node, tmp, packets, []))
            refs[FLOOR].append(run_floor(pod, node, packets))
            line = f"run {i}: baseline {base[-1].cpu:.2f}s at {base[-1].rate:,.0f}/s"
            for name, runs in refs.items():
                line += f"; {name} {runs[-1].cpu:.2f}s ({runs[-1].counted} NEW events)"
            order = list(configs.items())
            random.Random(i).shuffle(order)  # no configuration always runs first
            for name, (args, commit) in order:
                r = run_agent(pod, node, tmp, packets, name, args, trees.get(commit))
                res[name].append(r)
                line += (f"; {name} {r.cpu:.2f}s (agent {r.agent:.2f}s, collector "
                         f"{r.collector:.2f}s, {r.counted} counted, {r.lost} lost, "
                         f"flood {r.rate:,.0f}/s)")
            print(line, flush=True)
    report(base, refs, res)


def report(base: list[Run], refs: dict[str, list[Run]], res: dict[str, list[Run]]) -> None:
    """Per connection the flood made (not per event seen: when conntrack -E's socket
    overflows it sees fewer, though the kernel built them all), above the no-watcher
    runs, two ways: the whole machine, and exactly (the sender's added CPU, which holds
    the kernel's work for the watcher, plus the watcher's own processes)."""
    b = statistics.median(r.cpu for r in base)
    bf = statistics.median(r.flood for r in base)

    def us(runs: list[Run]) -> tuple[float, float]:
        whole = statistics.median((r.cpu - b) / FLOOD * 1e6 for r in runs)
        exact = statistics.median((r.flood - bf + r.own) / FLOOD * 1e6 for r in runs)
        return whole, exact

    ref = {name: us(runs) for name, runs in refs.items()}
    print(f"flood {FLOOD} SYNs ({'answered' if ANSWER else 'unanswered'}), median "
          f"{statistics.median(r.rate for r in base):,.0f}/s; no watcher: whole machine "
          f"{b / FLOOD * 1e6:.2f} us per SYN, of which the sender {bf / FLOOD * 1e6:.2f} us")
    all_w, all_x = ref["conntrack -E"]
    for name, runs in refs.items():
        whole, exact = ref[name]
        print(f"  {name}: flood {statistics.median(r.rate for r in runs):,.0f}/s; added per "
              f"connection: whole machine {whole:.2f} us, exact {exact:.2f} us "
              + (f"(ratio {whole / all_w:.2f} / {exact / all_x:.2f} to conntrack -E: the "
                 "kernel's part, which no watcher avoids)" if name == FLOOR else
                 f"(its process {statistics.median(r.own for r in runs) / FLOOD * 1e6:.2f} "
                 f"us); NEW events seen {sorted(r.counted for r in runs)} of {FLOOD}"))
    rounds = list(zip(base, refs["conntrack -E"], strict=True))
    new_w, new_x = ref["conntrack -E -e NEW"]
    netlink = us(res["netlink"]) if "netlink" in res else None
    for name, runs in res.items():
        whole, exact = us(runs)
        agent = statistics.median(r.agent for r in runs) / FLOOD * 1e6
        coll = statistics.median(r.collector for r in runs) / FLOOD * 1e6
        exactly = all(r.counted == r.made == FLOOD for r in runs)
        print(f"  {name}: flood {statistics.median(r.rate for r in runs):,.0f}/s; added per "
              f"connection: whole machine {whole:.2f} us (ratio {whole / all_w:.2f} to "
              f"conntrack -E, {whole / new_w:.2f} to -e NEW), exact {exact:.2f} us (ratio "
              f"{exact / all_x:.2f}, {exact / new_x:.2f}); agent {agent:.2f} us, collector "
              f"{coll:.2f} us; counted == the kernel's table == {FLOOD} in every run: "
              f"{exactly}; max lost {max(r.lost for r in runs)}"
              + (f"; whole-machine ratio to the netlink source {whole / netlink[0]:.2f}"
                 if netlink and name != "netlink" else ""))
        # Paired within each round (the reference and this configuration minutes apart):
        # this machine's speed drifts between rounds by more than a watcher costs.
        paired = sorted(round((r.cpu - b0.cpu) / (ct.cpu - b0.cpu), 2)
                        for r, (b0, ct) in zip(runs, rounds, strict=True))
        print(f"    whole-machine ratio to conntrack -E per round: {paired}, median "
              f"{statistics.median(paired):.2f}")
        lo_w, hi_w = interval(base, refs["conntrack -E"], runs, lambda r: r.cpu)
        lo_x, hi_x = interval(base, refs["conntrack -E"], runs, lambda r: r.flood + r.own)
        print(f"    90% interval of the ratio to conntrack -E, rounds resampled: whole "
              f"machine {lo_w:.2f}-{hi_w:.2f}, exact {lo_x:.2f}-{hi_x:.2f}")


def interval(base: list[Run], ref: list[Run], runs: list[Run], cpu: Callable[[Run], float],
             draws: int = 2000) -> tuple[float, float]:
    """The 5th and 95th percentiles of the ratio (median added CPU of ``runs`` over that
    of ``ref``, above the median of ``base``) when whole rounds are drawn with
    replacement: how far the ratio could move on this machine's noise alone."""
    rng = random.Random(0)
    n = len(base)
    ratios = []
    for _ in range(draws):
        pick = [rng.randrange(n) for _ in range(n)]
        b = statistics.median(cpu(base[i]) for i in pick)
        den = statistics.median(cpu(ref[i]) - b for i in pick)
        if den > 0:
            ratios.append(statistics.median(cpu(runs[i]) - b for i in pick) / den)
    ratios.sort()
    return ratios[len(ratios) // 20], ratios[len(ratios) * 19 // 20]


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the lab and any mount are removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
