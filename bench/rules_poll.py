"""What a watching agent costs a quiet node: rules read every interval, or only when
nf_tables' generation moved.

In the seed lab (iptables mode on the nf_tables backend), with no traffic: the agent
and collector of this tree, and those of BEFORE (the last commit that ran ``nft``,
``iptables-save`` and ``ip6tables-save`` every rules interval), each for WINDOW
seconds, interleaved over RUNS rounds with a window with no agent at all. Reported:
whole-machine busy CPU above the no-agent window (the dump processes are children, so
only the machine sees them), the agent's and collector's own CPU, in milliseconds
per second, and processes started on the machine per second; medians. Over
source_cpu.py's 8-second flood window this idle cost is charged to the flood's
connections, so it is part of every ratio there.
Run: .venv/bin/python bench/rules_poll.py   (root; BEFORE=1ab0562 WINDOW=20 RUNS=3
     INTERVAL=2, the agent's default --rules-interval)
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import source_cpu as sc  # bench/, beside this script

from natlens.lab import topology
from natlens.lab.scenario import load_scenario

BEFORE = os.environ.get("BEFORE", "1ab0562")
WINDOW = float(os.environ.get("WINDOW", "20"))
RUNS = int(os.environ.get("RUNS", "3"))
INTERVAL = os.environ.get("INTERVAL", "2")
ARGS = ["--source", "ebpf", "--no-ct-accounting", "--rules-interval", INTERVAL]


def forks() -> int:
    """Processes created since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("processes "))


def window(nl: sc.Natlens | None) -> tuple[float, float, float, float]:
    """Machine busy, agent and collector CPU seconds, and processes started, over
    WINDOW seconds."""
    if nl is not None:
        nl.watching()
        time.sleep(2)  # past the start-up reads and the first counters
    a0 = sc.proc_cpu(nl.ag.pid) if nl else 0.0
    c0 = sc.proc_cpu(nl.col.pid) if nl else 0.0
    f0, b0 = forks(), sc.busy()
    time.sleep(WINDOW)
    b1, f1 = sc.busy(), forks()
    a1 = sc.proc_cpu(nl.ag.pid) if nl else 0.0
    c1 = sc.proc_cpu(nl.col.pid) if nl else 0.0
    return b1 - b0, a1 - a0, c1 - c0, f1 - f0


def main() -> None:
    st = topology.up(load_scenario(sc.SEED), str(sc.SEED))
    node = st.nodes["k8s-node2"]
    got: dict[str, list[tuple[float, float, float, float]]] = {
        "no agent": [], "this tree": [], f"@{BEFORE}": []}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            trees = {"this tree": None, f"@{BEFORE}": sc.tree_at(BEFORE, tmp)}
            for i in range(RUNS):
                for name in got:
                    sc.clear(node)
                    if name == "no agent":
                        got[name].append(window(None))
                    else:
                        nl = sc.Natlens(node, tmp, name, ARGS, trees[name])
                        try:
                            got[name].append(window(nl))
                        finally:
                            nl.stop()
                    b, a, c, f = got[name][-1]
                    print(f"run {i} {name}: machine {b / WINDOW * 1e3:.1f} ms/s, agent "
                          f"{a / WINDOW * 1e3:.1f}, collector {c / WINDOW * 1e3:.1f}, "
                          f"{f / WINDOW:.1f} processes/s", flush=True)
    finally:
        topology.down(st)
    base = statistics.median(r[0] for r in got["no agent"]) / WINDOW * 1e3
    print(f"quiet node, --rules-interval {INTERVAL}, {RUNS} rounds of {WINDOW:.0f} s, "
          f"medians (machine with no agent: {base:.1f} ms/s busy):")
    for name in list(got)[1:]:
        m = [statistics.median(r[k] for r in got[name]) / WINDOW * 1e3 for k in range(4)]
        print(f"  {name}: adds {m[0] - base:.1f} ms/s to the machine; agent {m[1]:.1f} ms/s, "
              f"collector {m[2]:.1f} ms/s; {m[3] / 1e3:.1f} processes started per second")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
