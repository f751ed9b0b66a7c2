"""How fast an agent is ready, and how much memory it holds, per source.

In the seed lab, a collector runs throughout; each round starts an agent on k8s-node2
(sources in a shuffled order), times it from exec to its first 200 from /readyz (the
source open and the rules read once), then sends FLOOD SYNs at RATE per second
(bench/synflood.py, answering endpoints) and reads the agent's peak resident memory
(VmHWM) once the flood's connections are counted. The hook source loads an object
compiled at install time through libbpf; the ebpf source compiles its program with
bcc's LLVM at start; netlink loads no program. Medians over RUNS rounds, and the
hook's ratio to the ebpf source's.

Run: .venv/bin/python bench/agent_start.py   (root)
     RUNS=5 FLOOD=30000 RATE=15000 SOURCES=hook,ebpf,netlink
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import (
    CLIENT,
    Flooder,
    build_flood,
    free_port,
    natlens_cmd,
    seed_lab,
    start_collector,
)

RUNS = int(os.environ.get("RUNS", "5"))
FLOOD = int(os.environ.get("FLOOD", "30000"))
RATE = int(os.environ.get("RATE", "15000"))
SOURCES = os.environ.get("SOURCES", "hook,ebpf,netlink").split(",")
NODE = "k8s-node2"


def peak_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return next(int(x.split()[1]) for x in text.splitlines() if x.startswith("VmHWM:")) / 1024


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def round_of(source: str, st: object, packets: Path, col_port: int, tmp: Path) -> tuple[
        float, float]:
    bpffs = tmp / f"bpffs-{time.monotonic_ns()}"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    health = free_port()
    nat, env = natlens_cmd()
    log = tmp / f"agent-{source}.log"
    try:
        t0 = time.perf_counter()
        ag = subprocess.Popen([*nat, "agent", "--insecure", "--collector",
                               f"127.0.0.1:{col_port}", "--node", "n", "--netns",
                               st.nodes[NODE], "--source", source,  # type: ignore[attr-defined]
                               "--pin-root", str(bpffs), "--health-listen",
                               f"127.0.0.1:{health}"], stderr=log.open("w"), env=env)
        while not ready(health):
            if ag.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError(f"{source} agent not ready: {log.read_text()[-400:]}")
            time.sleep(0.005)
        startup = time.perf_counter() - t0
        fl = Flooder(st.pods[CLIENT], packets, RATE)  # type: ignore[attr-defined]
        fl.run()
        time.sleep(2)  # the last records drained and shipped
        peak = peak_mib(ag.pid)
        ag.terminate()
        ag.wait(timeout=60)
        return startup, peak
    finally:
        subprocess.run(["umount", str(bpffs)], check=True)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="natlens-start-"))
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in SOURCES}
    with seed_lab() as st:
        packets = build_flood(st.pods[CLIENT], tmp, FLOOD)
        col, port = start_collector(tmp / "natlens.db", tmp / "collector.log")
        try:
            for r in range(RUNS):
                order = random.sample(SOURCES, len(SOURCES))
                for s in order:
                    subprocess.run(["ip", "netns", "exec", st.nodes[NODE], "conntrack", "-F"],
                                   capture_output=True)
                    results[s].append(round_of(s, st, packets, port, tmp))
                    print(f"round {r + 1} {s}: ready in {results[s][-1][0]:.3f} s, "
                          f"peak RSS {results[s][-1][1]:.1f} MiB", flush=True)
        finally:
            col.terminate()
            col.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{RUNS} rounds, a {FLOOD}-SYN flood at {RATE}/s each (medians, range):")
    med = {s: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for s, v in results.items()}
    for s, v in results.items():
        print(f"  {s:8} ready {med[s][0]:.3f} s ({min(x[0] for x in v):.3f}-"
              f"{max(x[0] for x in v):.3f})  peak RSS {med[s][1]:.1f} MiB "
              f"({min(x[1] for x in v):.1f}-{max(x[1] for x in v):.1f})")
    if "hook" in med and "ebpf" in med:
        print(f"  hook / ebpf: ready {med['hook'][0] / med['ebpf'][0]:.2f}x, "
              f"peak RSS {med['hook'][1] / med['ebpf'][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
