"""What a watching agent costs a quiet node: CPU, processes, memory, start-up.

Two changes are judged here. The rules are read only when nf_tables' generation moved,
not every interval; and the CLI no longer imports every command's error classes, which
made the agent load the collector's statistics (scipy, numpy) at start.

In the seed lab (iptables mode on the nf_tables backend), with no traffic: the agent
and collector of this tree, and those of BEFORE (the last commit that ran ``nft``,
``iptables-save`` and ``ip6tables-save`` every rules interval), each for WINDOW
seconds, interleaved over RUNS rounds with a window with no agent at all. Reported:
whole-machine busy CPU above the no-agent window (the dump processes are children, so
only the machine sees them), the agent's and collector's own CPU, in milliseconds
per second, processes started on the machine per second, the agent's and collector's
resident memory at the window's end, and the seconds from start until the agent
subscribed (bcc compiles the filter in that time); medians. Over
the flood benchmarks' windows this idle cost is charged to the flood's
connections, so it is part of every ratio there.
Run: .venv/bin/python bench/idle_agent.py   (root; BEFORE=1ab0562 WINDOW=20 RUNS=3
     INTERVAL=2, the agent's default --rules-interval; ARGS="--source ebpf
     --no-ct-accounting", the agent's other arguments)
     BEFORE=c255fe9 ARGS="--source hook"  (the hook's beat on a quiet ring)
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness as h  # bench/harness.py, beside this script

from natlens.lab import topology
from natlens.lab.scenario import load_scenario

BEFORE = os.environ.get("BEFORE", "1ab0562")
WINDOW = float(os.environ.get("WINDOW", "20"))
RUNS = int(os.environ.get("RUNS", "3"))
INTERVAL = os.environ.get("INTERVAL", "2")
ARGS = [*os.environ.get("ARGS", "--source ebpf --no-ct-accounting").split(),
        "--rules-interval", INTERVAL]


Sample = tuple[float, float, float, float, float, float, float]


def window(nl: h.Natlens | None, t0: float) -> Sample:
    """Machine busy, agent and collector CPU seconds, processes started, over WINDOW
    seconds; agent and collector RSS at its end; seconds from ``t0`` until ready."""
    ready = 0.0
    if nl is not None:
        nl.watching()
        ready = time.monotonic() - t0
        time.sleep(2)  # past the start-up reads and the first counters
    a0 = h.proc_cpu(nl.ag.pid) if nl else 0.0
    c0 = h.proc_cpu(nl.col.pid) if nl else 0.0
    f0, b0 = h.forks(), h.busy()
    time.sleep(WINDOW)
    b1, f1 = h.busy(), h.forks()
    a1 = h.proc_cpu(nl.ag.pid) if nl else 0.0
    c1 = h.proc_cpu(nl.col.pid) if nl else 0.0
    mem = (h.rss_mib(nl.ag.pid), h.rss_mib(nl.col.pid)) if nl else (0.0, 0.0)
    return b1 - b0, a1 - a0, c1 - c0, f1 - f0, *mem, ready


def main() -> None:
    st = topology.up(load_scenario(h.SEED), str(h.SEED))
    node = st.nodes["k8s-node2"]
    got: dict[str, list[Sample]] = {
        "no agent": [], "this tree": [], f"@{BEFORE}": []}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            trees = {"this tree": None, f"@{BEFORE}": h.tree_at(BEFORE, tmp)}
            for i in range(RUNS):
                for name in got:
                    h.clear(node)
                    if name == "no agent":
                        got[name].append(window(None, 0.0))
                    else:
                        t0 = time.monotonic()
                        nl = h.Natlens(node, tmp, name, ARGS, trees[name])
                        try:
                            got[name].append(window(nl, t0))
                        finally:
                            nl.stop()
                    b, a, c, f, ra, rc, ready = got[name][-1]
                    print(f"run {i} {name}: machine {b / WINDOW * 1e3:.1f} ms/s, agent "
                          f"{a / WINDOW * 1e3:.1f}, collector {c / WINDOW * 1e3:.1f}, "
                          f"{f / WINDOW:.1f} processes/s; RSS agent {ra:.0f} MiB, "
                          f"collector {rc:.0f} MiB; ready after {ready:.1f} s", flush=True)
    finally:
        topology.down(st)
    base = statistics.median(r[0] for r in got["no agent"]) / WINDOW * 1e3
    print(f"quiet node, --rules-interval {INTERVAL}, {RUNS} rounds of {WINDOW:.0f} s, "
          f"medians (machine with no agent: {base:.1f} ms/s busy):")
    for name in list(got)[1:]:
        m = [statistics.median(r[k] for r in got[name]) / WINDOW * 1e3 for k in range(4)]
        ra, rc, ready = (statistics.median(r[k] for r in got[name]) for k in (4, 5, 6))
        print(f"  {name}: adds {m[0] - base:.1f} ms/s to the machine; agent {m[1]:.1f} ms/s, "
              f"collector {m[2]:.1f} ms/s; {m[3] / 1e3:.1f} processes started per second; "
              f"RSS agent {ra:.0f} MiB, collector {rc:.0f} MiB; ready after {ready:.1f} s")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
