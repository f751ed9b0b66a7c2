"""Where the kernel's CPU for a conntrack event goes, sampled with perf.

bench/source_cpu.py measures that a ctnetlink listener which keeps nothing (classic BPF
``ret #0``) already costs the machine a good part of what `conntrack -E` costs. This
says why: in the seed lab, the same unanswered SYN flood as there, under no watcher,
under that listener, and under `conntrack -E`, each with ``perf record -a -g`` (cpu-clock,
every CPU) running across the flood and TAIL seconds after it. Samples are charged,
per connection the flood made, to

- ``event build``: stacks through ctnetlink_conntrack_event, the kernel building each
  event message and broadcasting it to the listening sockets (filters run there);
- ``socket read``: stacks through netlink_recvmsg, a reader copying messages out;
- ``filter``: natlens's eBPF program (bpf_prog_*_ct_filter) and what it calls, under
  the natlens agent in aggregate mode (its own processes are measured exactly by
  source_cpu.py); ``seen map``, the part of that in the LRU map of conntrack ids
  (htab_lru_map_update_elem, what a restarted agent reconciles against);
- ``conntrack process``: every sample of the `conntrack -E` process, kernel or user;
- ``busy``: every sample that is not the idle loop.

The event build is paid once any listener exists, whatever the listener does; its share
of what `conntrack -E` adds is the least any ctnetlink watcher can cost relative to
it. Medians of RUNS rounds. perf samples every CPU's clock 4,000 times a second, so
these are estimates; source_cpu.py's figures are exact.
Run: .venv/bin/python bench/event_cost.py   (root; needs perf from linux-perf; RATE=30000)
     MODES="natlens aggregate" .venv/bin/python bench/event_cost.py   (the filter alone)
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness as h  # bench/harness.py, beside this script

from natlens.lab import topology
from natlens.lab.scenario import load_scenario

RUNS = int(os.environ.get("RUNS", "3"))
MODES = os.environ.get("MODES", "none,floor,conntrack -E,natlens aggregate").split(",")
IDLE = ("pv_native_safe_halt", "default_idle", "cpu_idle_poll", "native_safe_halt")
MARKS = {"event build": "ctnetlink_conntrack_event", "socket read": "netlink_recvmsg"}


def charge(data: Path) -> dict[str, float]:
    """Microseconds of sampled CPU per connection in each category."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,period,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    ns: collections.Counter[str] = collections.Counter()
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        head = lines[0].split()
        comm, period = " ".join(head[:-1]), int(head[-1])
        syms = {ln.split()[-1].split("+")[0] for ln in lines[1:] if ln.split()}
        if syms & set(IDLE):
            continue
        ns["busy"] += period
        for name, mark in MARKS.items():
            if mark in syms:
                ns[name] += period
        if any(x.startswith("bpf_prog_") and x.endswith("_ct_filter") for x in syms):
            ns["filter"] += period
            if "htab_lru_map_update_elem" in syms:
                ns["seen map"] += period
        if comm == "conntrack":
            ns["conntrack process"] += period
    return {k: v / 1e3 / h.FLOOD for k, v in ns.items()}


def flood_sampled(pod: str, packets: Path, data: Path) -> float:
    """One flood under ``perf record``; the flood's rate."""
    fl = h.Flooder(pod, packets)
    perf = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock",
                             "-o", str(data)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1)  # perf is set up on every CPU
    rate, _ = fl.run()
    time.sleep(h.TAIL)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=60)
    return rate


def under_floor(node: str, pod: str, packets: Path, data: Path) -> float:
    src = h.floor_listener(node)
    try:
        return flood_sampled(pod, packets, data)
    finally:
        src.close()


def under_conntrack(node: str, pod: str, packets: Path, data: Path, tmp: Path) -> float:
    p = h.conntrack_events(node, tmp / "ct.txt", [])
    time.sleep(0.5)
    try:
        return flood_sampled(pod, packets, data)
    finally:
        p.terminate()
        p.wait()


def under_natlens(node: str, pod: str, packets: Path, data: Path, tmp: Path) -> float:
    nl = h.Natlens(node, tmp, "aggregate", ["--source", "ebpf", "--no-ct-accounting"])
    try:
        nl.watching()
        return flood_sampled(pod, packets, data)
    finally:
        nl.stop()


def main() -> None:
    if shutil.which("perf") is None:
        sys.exit("event_cost: perf not found; install linux-perf (Debian) to run this")
    st = topology.up(load_scenario(h.SEED), str(h.SEED))
    pod, node = st.pods[h.CLIENT], st.nodes["k8s-node2"]
    got: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            h.silence_endpoints(st)
            packets = h.build_flood(pod, tmp)
            for i in range(RUNS):
                for mode in got:
                    h.clear(node)
                    data = tmp / f"{i}-{mode.replace(' ', '')}.data"
                    if mode == "none":
                        rate = flood_sampled(pod, packets, data)
                    elif mode == "floor":
                        rate = under_floor(node, pod, packets, data)
                    elif mode == "conntrack -E":
                        rate = under_conntrack(node, pod, packets, data, tmp)
                    else:
                        rate = under_natlens(node, pod, packets, data, tmp)
                    got[mode].append(charge(data))
                    print(f"run {i} {mode}: {rate:,.0f}/s "
                          + ", ".join(f"{k} {v:.2f} us" for k, v in got[mode][-1].items()),
                          flush=True)
    finally:
        topology.down(st)
    report(got)


def report(got: dict[str, list[dict[str, float]]]) -> None:
    def med(mode: str, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in got[mode])

    if "natlens aggregate" in got:
        print(f"natlens aggregate: its filter {med('natlens aggregate', 'filter'):.2f} us "
              f"per connection (sampled), of which the seen map "
              f"{med('natlens aggregate', 'seen map'):.2f} us")
    if not {"none", "floor", "conntrack -E", "natlens aggregate"} <= set(got):
        return
    base = med("none", "busy")
    ct_added = med("conntrack -E", "busy") - base
    floor_added = med("floor", "busy") - base
    build = med("floor", "event build")
    print(f"flood {h.FLOOD} SYNs at {h.RATE or 'max'}/s, {RUNS} rounds, medians, sampled "
          f"CPU per connection above the no-watcher flood ({base:.2f} us busy):")
    print(f"  conntrack -E adds {ct_added:.2f} us: event build "
          f"{med('conntrack -E', 'event build'):.2f}, socket read "
          f"{med('conntrack -E', 'socket read'):.2f}, its process "
          f"{med('conntrack -E', 'conntrack process'):.2f}")
    print(f"  the listener that keeps nothing adds {floor_added:.2f} us, of which event "
          f"build {build:.2f} us: {build / ct_added:.2f} of what conntrack -E adds is "
          f"paid for any listener ({floor_added / ct_added:.2f} with the rest of its "
          "added time)")
    agg = med("natlens aggregate", "busy") - base
    print(f"  natlens aggregate adds {agg:.2f} us ({agg / ct_added:.2f} of conntrack -E): "
          f"event build {med('natlens aggregate', 'event build'):.2f}, of which its filter "
          f"{med('natlens aggregate', 'filter'):.2f} us (its seen map "
          f"{med('natlens aggregate', 'seen map'):.2f} us)")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
