"""CPU per DNAT event: natlens' netlink source against `conntrack -E` on the same flood.

In the seed lab, hping3 sends FLOOD SYNs from front-tomcat to the ClusterIP (each a new
conntrack entry and a DNAT decision on k8s-node2). Whole-machine busy CPU is read from
/proc/stat around each run; a run with no watcher is the reference subtracted from
both. Each configuration runs 3 times; medians are reported, with the ratio.
Run: .venv/bin/python bench/netlink_cpu.py  (root; needs hping3 and conntrack)
"""

from __future__ import annotations

import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from natlens.lab import topology
from natlens.lab.scenario import load_scenario

FLOOD, INTERVAL_US, RUNS = 20000, 60, 3
SEED = Path(__file__).resolve().parent.parent / "examples" / "seed-bill-service.yaml"
TICK = os.sysconf("SC_CLK_TCK")


def busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK  # minus idle and iowait


def flood(pod_ns: str, node_ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-F"], capture_output=True)
    subprocess.run(["ip", "netns", "exec", pod_ns, "hping3", "-q", "-S", "-p", "9999",
                    "-i", f"u{INTERVAL_US}", "-c", str(FLOOD), "10.1.122.241"],
                   capture_output=True, timeout=300)


def settle(count: callable[[], int], timeout: float = 60) -> int:  # type: ignore[valid-type]
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 1.0:
            return n
        time.sleep(0.2)
    return last


def run_baseline(pod: str, node: str) -> float:
    t = busy()
    flood(pod, node)
    return busy() - t


def run_conntrack(pod: str, node: str, tmp: Path) -> tuple[float, int]:
    out = tmp / "ct.txt"
    p = subprocess.Popen(["ip", "netns", "exec", node, "conntrack", "-E", "-e", "NEW",
                          "-b", str(64 << 20)], stdout=out.open("w"), stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    t = busy()
    flood(pod, node)
    n = settle(lambda: out.read_text().count("\n"))
    cpu = busy() - t
    p.terminate()
    p.wait()
    return cpu, n


def run_agent(pod: str, node: str, tmp: Path, i: int) -> tuple[float, int, int]:
    db = tmp / f"agent{i}.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nat = [sys.executable, "-m", "natlens"]
    col = subprocess.Popen([*nat, "collector", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert col.stdout and col.stdout.readline().startswith("listening")
    ag = subprocess.Popen([*nat, "agent", "--collector", f"127.0.0.1:{port}", "--node", "n",
                           "--netns", node, "--no-ct-accounting"], stderr=subprocess.DEVNULL)

    def stored() -> int:
        try:
            with sqlite3.connect(db) as c:
                return int(c.execute("SELECT COUNT(*) FROM decisions WHERE event='new'")
                           .fetchone()[0])
        except sqlite3.Error:
            return 0

    def lost() -> int:
        with sqlite3.connect(db) as c:
            return int(c.execute("SELECT COALESCE(SUM(count),0) FROM lost_events").fetchone()[0])

    time.sleep(2)
    t = busy()
    flood(pod, node)
    n = settle(stored)
    cpu = busy() - t
    ag.terminate()
    ag.wait()
    col.terminate()
    col.wait()
    # the collector's share is not the agent's cost; it is included, so this is an
    # upper bound for the agent alone
    return cpu, n, lost()


def main() -> None:
    sc = load_scenario(SEED)
    st = topology.up(sc, str(SEED))
    pod = st.pods["istio-demo/front-tomcat-v1-7f8c94c6c8-lfz5m"]
    node = st.nodes["k8s-node2"]
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            base, ct, ag = [], [], []
            for i in range(RUNS):
                base.append(run_baseline(pod, node))
                c, n_ct = run_conntrack(pod, node, tmp)
                ct.append((c, n_ct))
                a, n_ag, lost = run_agent(pod, node, tmp, i)
                ag.append((a, n_ag, lost))
                print(f"run {i}: baseline {base[-1]:.2f}s cpu; conntrack -E {c:.2f}s "
                      f"({n_ct} events); natlens agent+collector {a:.2f}s ({n_ag} decisions, "
                      f"{lost} lost)", flush=True)
    finally:
        topology.down(st)
    b = statistics.median(base)
    ct_us = statistics.median((c - b) / n * 1e6 for c, n in ct)
    ag_us = statistics.median((a - b) / n * 1e6 for a, n, _ in ag)
    print(f"flood {FLOOD} SYNs at 1 per {INTERVAL_US} us; CPU per event above the no-watcher "
          f"reference: conntrack -E {ct_us:.1f} us, natlens (agent + collector) {ag_us:.1f} us; "
          f"ratio natlens/conntrack {ag_us / ct_us:.2f}")


if __name__ == "__main__":
    main()
