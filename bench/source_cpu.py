"""CPU per DNAT event of each natlens source against `conntrack -E`, on the same flood.

In the seed lab, hping3 sends FLOOD SYNs from front-tomcat to the ClusterIP as fast as
it can (each a new conntrack entry and a DNAT decision on k8s-node2). Whole-machine
busy CPU is read from /proc/stat around each run; a run with no watcher is the
reference subtracted from the others. The agent's and the collector's own CPU are
read from /proc/PID/stat as well. Each configuration runs RUNS times; medians and
ratios to `conntrack -E` (and to the netlink source, when it runs) are printed.
Run: .venv/bin/python bench/source_cpu.py  (root; needs hping3, conntrack and bcc)
     RATE=5000 CONFIGS=netlink,pcap .venv/bin/python bench/source_cpu.py
       (hping3 paced to RATE SYNs/s; only the named configurations)
     FLOODERS=3 .venv/bin/python bench/source_cpu.py
       (three hping3 at once; not with RATE)
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from natlens.lab import topology
from natlens.lab.scenario import load_scenario

FLOOD = int(os.environ.get("FLOOD", "60000"))
RATE = int(os.environ.get("RATE", "0"))  # SYNs per second; 0: as fast as hping3 goes
RUNS = int(os.environ.get("RUNS", "3"))
FLOODERS = int(os.environ.get("FLOODERS", "1"))  # hping3 processes at once
SEED = Path(__file__).resolve().parent.parent / "examples" / "seed-bill-service.yaml"
TICK = os.sysconf("SC_CLK_TCK")
# Byte counters and timestamps (on by default) cost on every packet of every flow, not
# per event; they are off here like for the conntrack -E run, and measured on their own.
CONFIGS = {"ebpf aggregate": ["--source", "ebpf", "--no-ct-accounting"],
           "ebpf aggregate + accounting": ["--source", "ebpf"],
           "ebpf --decisions": ["--source", "ebpf", "--decisions", "--no-ct-accounting"],
           "netlink": ["--source", "netlink", "--no-ct-accounting"],
           "pcap": ["--source", "pcap", "--no-ct-accounting"]}
DEFAULT = "ebpf aggregate,ebpf aggregate + accounting,ebpf --decisions,netlink"
CONFIGS = {k: v for k, v in CONFIGS.items()
           if k in os.environ.get("CONFIGS", DEFAULT).split(",")}


def busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK  # minus idle and iowait


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def clear(node_ns: str) -> None:
    """Empty the table before a watcher starts: no startup snapshot, no flush events
    inside a measured window."""
    subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-F"], capture_output=True)
    for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
        subprocess.run(["ip", "netns", "exec", node_ns, "sysctl", "-qw",
                        f"net.netfilter.{key}=0"], check=True)
    time.sleep(0.5)


READY = ("conntrack: subscribed", "source pcap: capturing")  # the agent's log says so
PACE_US = [1]  # hping3's -i in microseconds; calibrate() sets it for RATE


def calibrate(pod_ns: str, node_ns: str) -> None:
    """hping3 sleeps ``-i`` plus its own overhead per SYN: measure the overhead once
    and set the interval that gives RATE."""
    if not RATE:
        return
    PACE_US[0] = 10**6 // RATE
    for _ in range(2):
        r = flood(pod_ns, node_ns, 3000)
        overhead = 10**6 / r - PACE_US[0]
        PACE_US[0] = max(int(10**6 / RATE - overhead), 1)
    print(f"pace: hping3 -i u{PACE_US[0]} for {RATE}/s "
          f"(calibration flood: {flood(pod_ns, node_ns, 3000):,.0f}/s)", flush=True)


def flood(pod_ns: str, node_ns: str, count: int = 0) -> float:
    """The flood; returns its rate in SYNs per second. With FLOODERS > 1, that many
    hping3 at once, each from its own range of source ports (one hping3 tops out at
    14,000-19,000 SYNs/s here; BENCHMARKS.md gives what several reach)."""
    total = count or FLOOD
    cmd = ["ip", "netns", "exec", pod_ns, "hping3", "-q", "-S", "-p", "9999",
           "-i", f"u{PACE_US[0]}", "10.1.122.241"]
    t = time.monotonic()
    if FLOODERS == 1:
        subprocess.run([*cmd, "-c", str(total)], capture_output=True, timeout=600)
    else:
        step = 64000 // FLOODERS
        shares = [total // FLOODERS + (i < total % FLOODERS) for i in range(FLOODERS)]
        if max(shares) > step:
            sys.exit(f"FLOOD {total} over {FLOODERS} flooders reuses source ports")
        procs = [subprocess.Popen([*cmd, "-c", str(n), "-s", str(1024 + i * step)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i, n in enumerate(shares)]
        for proc in procs:
            proc.wait(timeout=600)
    return total / (time.monotonic() - t)


def table_count(node_ns: str) -> int:
    """Entries to the ClusterIP in the node's conntrack table: right after a flood into
    a flushed table, the connections the kernel made in this very run (a reset flow
    stays 10 s)."""
    out = subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-L", "-p", "tcp",
                          "--orig-dst", "10.1.122.241"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("tcp"))


def settle(count: Callable[[], int], timeout: float = 120) -> int:
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 1.5:
            return n
        time.sleep(0.2)
    return last


def run_baseline(pod: str, node: str) -> tuple[float, float]:
    clear(node)
    t = busy()
    rate = flood(pod, node)
    time.sleep(1.5)  # the others' windows end 1.5 s after their count stops changing
    return busy() - t, rate


def run_conntrack(pod: str, node: str, tmp: Path,
                  events: list[str]) -> tuple[float, int, float]:
    """`conntrack -E` with ``events`` (e.g. ``-e NEW``); returns CPU, NEW events seen
    and the flood's rate."""
    out = tmp / "ct.txt"
    clear(node)
    p = subprocess.Popen(["ip", "netns", "exec", node, "conntrack", "-E", *events,
                          "-b", str(256 << 20)], stdout=out.open("w"),
                         stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    t = busy()
    rate = flood(pod, node)
    n = settle(lambda: out.read_text().count("[NEW]"))
    cpu = busy() - t
    p.terminate()
    p.wait()
    return cpu, n, rate


def run_agent(pod: str, node: str, tmp: Path, name: str,
              args: list[str]) -> tuple[float, float, float, int, int, int, float]:
    """(whole-machine CPU, agent CPU, collector CPU, decisions counted, lost, entries
    the flood made in the kernel's table, flood rate)."""
    db = tmp / f"{name.replace(' ', '_')}-{time.monotonic_ns()}.db"
    clear(node)
    bpffs = tmp / "bpffs"
    bpffs.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nat = [sys.executable, "-m", "natlens"]
    logs = (tmp / "collector.log", tmp / "agent.log")
    col = subprocess.Popen([*nat, "collector", "--insecure",
                            "--db", str(db), "--listen", f"127.0.0.1:{port}"],
                           stdout=subprocess.PIPE, stderr=logs[0].open("w"), text=True)
    assert col.stdout and col.stdout.readline().startswith("listening")
    ag = subprocess.Popen([*nat, "agent", "--insecure",
                           "--collector", f"127.0.0.1:{port}", "--node", "n",
                           "--netns", node, "--pin-root", str(bpffs),
                           "--counters-interval", "1", *args],
                          stderr=logs[1].open("w"))

    def counted() -> int:
        try:
            with sqlite3.connect(db) as c:
                n = c.execute("SELECT COUNT(*) FROM decisions WHERE event='new' AND "
                              "source IN ('netlink', 'pcap')").fetchone()[0]
                if "counters" in {r[0] for r in c.execute(
                        "SELECT name FROM sqlite_master WHERE type='table'")}:
                    n += c.execute("SELECT COALESCE(SUM(connections),0) FROM counters"
                                   ).fetchone()[0]
                return int(n)
        except sqlite3.Error:
            return 0

    def lost() -> int:
        """Every loss the agent reported (overflow, capture drops, map full, malformed)."""
        with sqlite3.connect(db) as c:
            return int(c.execute("SELECT COALESCE(SUM(count),0) FROM lost_events"
                                 ).fetchone()[0])

    # Flood only once the agent watches: bcc compiles the program first (4 s or more on a
    # busy machine), and connections made before it subscribes are in the table, not
    # in its counts (the startup dump stores them as a snapshot, not counted).
    deadline = time.monotonic() + 60
    while not any(m in logs[1].read_text() for m in READY):
        if time.monotonic() > deadline or ag.poll() is not None:
            raise RuntimeError(f"agent not ready: {logs[1].read_text()[-500:]}")
        time.sleep(0.1)
    time.sleep(1)
    t, a0, c0 = busy(), proc_cpu(ag.pid), proc_cpu(col.pid)
    rate = flood(pod, node)
    made = table_count(node)
    n = settle(counted)
    cpu, a1, c1 = busy() - t, proc_cpu(ag.pid), proc_cpu(col.pid)
    ag.terminate()
    ag.wait()
    col.terminate()
    col.wait()
    n = counted()  # after the agent's last shipment
    subprocess.run(["umount", str(bpffs)], check=True)
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
    return cpu, a1 - a0, c1 - c0, n, lost(), made, rate


def main() -> None:
    if RATE and FLOODERS > 1:
        sys.exit("RATE paces one hping3: use it with FLOODERS=1")
    sc = load_scenario(SEED)
    st = topology.up(sc, str(SEED))
    pod = st.pods["istio-demo/front-tomcat-v1-7f8c94c6c8-lfz5m"]
    node = st.nodes["k8s-node2"]
    calibrate(pod, node)
    base: list[float] = []
    rates: list[float] = []
    ct: list[tuple[float, int, float]] = []
    ct_all: list[tuple[float, int, float]] = []
    res: dict[str, list[tuple[float, float, float, int, int, int, float]]] = {
        k: [] for k in CONFIGS}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            for i in range(RUNS):
                b, rate = run_baseline(pod, node)
                base.append(b)
                rates.append(rate)
                ct.append(run_conntrack(pod, node, tmp, ["-e", "NEW"]))
                ct_all.append(run_conntrack(pod, node, tmp, []))
                line = (f"run {i}: {rate:,.0f} SYN/s; baseline {b:.2f}s; conntrack -E -e NEW "
                        f"{ct[-1][0]:.2f}s ({ct[-1][1]} events); conntrack -E "
                        f"{ct_all[-1][0]:.2f}s")
                order = list(CONFIGS.items())
                random.Random(i).shuffle(order)  # no configuration always runs first
                for name, args in order:
                    res[name].append(run_agent(pod, node, tmp, name, args))
                    w, a, c, n, lo, _, r = res[name][-1]
                    line += (f"; {name} {w:.2f}s (agent {a:.2f}s, collector {c:.2f}s, "
                             f"{n} counted, {lo} lost, flood {r:,.0f}/s)")
                print(line, flush=True)
    finally:
        topology.down(st)
    b = statistics.median(base)
    # per connection the flood made (not per event seen: at 20,000/s and more
    # conntrack -E's socket overflows and it sees fewer, the kernel built them all)
    ct_us = statistics.median((c - b) / FLOOD * 1e6 for c, _, _ in ct)
    all_us = statistics.median((c - b) / FLOOD * 1e6 for c, _, _ in ct_all)
    print(f"flood {FLOOD} SYNs, median {statistics.median(rates):,.0f}/s; CPU per new "
          f"connection above the no-watcher reference: conntrack -E -e NEW {ct_us:.2f} us, "
          f"conntrack -E (all events) {all_us:.2f} us")
    print(f"  conntrack -E -e NEW saw {sorted(n for _, n, _ in ct)} NEW events (flood "
          f"{statistics.median(r for *_, r in ct):,.0f}/s), conntrack -E "
          f"{sorted(n for _, n, _ in ct_all)} (flood "
          f"{statistics.median(r for *_, r in ct_all):,.0f}/s), of {FLOOD} connections each")
    per_event = {name: statistics.median((r[0] - b) / r[3] * 1e6 for r in runs)
                 for name, runs in res.items()}
    for name, runs in res.items():
        whole = per_event[name]
        agent = statistics.median(r[1] / r[3] * 1e6 for r in runs)
        coll = statistics.median(r[2] / r[3] * 1e6 for r in runs)
        exact = all(r[3] == r[5] for r in runs)
        lost = max(r[4] for r in runs)
        rate = statistics.median(r[6] for r in runs)
        print(f"  {name}: flood {rate:,.0f}/s; whole machine {whole:.2f} us/event (ratio "
              f"{whole / ct_us:.2f} to -e NEW, {whole / all_us:.2f} to all events), "
              f"agent {agent:.2f} us, collector {coll:.2f} us; counted == the kernel's table "
              f"in every run: {exact}; max lost {lost}"
              + (f"; ratio to the netlink source {whole / per_event['netlink']:.2f}"
                 if "netlink" in per_event and name != "netlink" else ""))


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the lab and any mount are removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
