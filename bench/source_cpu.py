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

import ctypes
import os
import random
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import synflood  # bench/, beside this script

from natlens.agent.sources.netlink import ConntrackSource
from natlens.lab import topology
from natlens.lab.scenario import load_scenario

FLOOD = int(os.environ.get("FLOOD", "60000"))
RATE = int(os.environ.get("RATE", "30000"))  # SYNs per second; 0: as fast as it goes
RUNS = int(os.environ.get("RUNS", "3"))
ANSWER = os.environ.get("ANSWER") == "1"  # endpoints answer (SYN-ACK, then the RST)
SEED = Path(__file__).resolve().parent.parent / "examples" / "seed-bill-service.yaml"
VIP, VIP_PORT, TARGET_PORT = "10.1.122.241", 9999, 80
CLIENT = "istio-demo/front-tomcat-v1-7f8c94c6c8-lfz5m"
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
# A commit: every configuration also runs with the agent and collector as they were
# there, interleaved in the same rounds (this machine's speed drifts between runs by
# more than most changes buy).
BEFORE = os.environ.get("BEFORE", "")
ROOT = Path(__file__).resolve().parent.parent
NCPU = os.cpu_count() or 1
USER_HZ = os.sysconf("SC_CLK_TCK")


def busy() -> float:
    """Whole-machine busy seconds so far (any origin): wall x CPUs minus the exact idle,
    and minus steal (time the hypervisor gave this VM's CPUs to others, read from its
    steal clock), which is no one's work here."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return time.monotonic() * NCPU - (v[3] + v[4] + v[7]) / USER_HZ


def proc_cpu(pid: int) -> float:
    """The process's exact CPU seconds, all threads (MAKE_PROCESS_CPUCLOCK(pid, SCHED))."""
    return time.clock_gettime((~pid << 3) | 2)


def clear(node_ns: str) -> None:
    """Empty the table before a watcher starts: no startup snapshot, no flush events
    inside a measured window."""
    subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-F"], capture_output=True)
    for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
        subprocess.run(["ip", "netns", "exec", node_ns, "sysctl", "-qw",
                        f"net.netfilter.{key}=0"], check=True)
    time.sleep(0.5)


READY = ("conntrack: subscribed", "source pcap: capturing")  # the agent's log says so


def silence_endpoints(st: topology.LabState) -> None:
    """The endpoints drop the flood's SYNs: no handshake, no RST, one DNAT each."""
    rule = ("table inet natlens_bench {\n chain pre {\n"
            "  type filter hook prerouting priority -300;\n"
            f"  tcp dport {TARGET_PORT} tcp flags & (syn | ack) == syn drop\n }}\n}}\n")
    for name, ns in st.pods.items():
        if name != CLIENT:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rule,
                           text=True, check=True)


class Flooder:
    """bench/synflood.py in the client pod, started and ready (packets loaded) before
    ``run`` starts the clock."""

    def __init__(self, pod_ns: str, packets: Path, rate: int = RATE) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, sys.executable, synflood.__file__, "send",
             str(packets), VIP, str(rate)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin and self.proc.stdout
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("synflood did not start")

    def run(self) -> tuple[float, float]:
        """Send; the flood's rate in SYNs per second, and the sender's CPU seconds
        (exact: the node's whole path for each SYN, conntrack events included, runs
        in its system time)."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        f = self.proc.stdout.readline().split()  # sent N in SECONDS s cpu SECONDS s
        self.proc.wait(timeout=60)
        return int(f[1]) / float(f[3]), float(f[6])


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


TAIL = float(os.environ.get("TAIL", "6"))  # seconds every window runs past the flood


class Window:
    """Whole-machine CPU over a window that ends TAIL seconds after the flood, in every
    run: the machine's background load then weighs the same on each (a window that
    ended when the count settled would charge the slower-settling watchers for it).
    Less this script's own CPU (its polling of files and databases)."""

    def __init__(self) -> None:
        self.t, self.own = busy(), time.process_time()
        self.end = 0.0

    def flood_done(self) -> None:
        self.end = time.monotonic() + TAIL

    def cpu(self) -> float:
        left = self.end - time.monotonic()
        if left < 0:
            print(f"  (counting settled {-left:.1f} s after the window; TAIL={TAIL} "
                  "is too short for this run)", flush=True)
        time.sleep(max(left, 0))
        return busy() - self.t - (time.process_time() - self.own)


def run_baseline(pod: str, node: str, packets: Path) -> Run:
    clear(node)
    fl = Flooder(pod, packets)
    w = Window()
    rate, flood = fl.run()
    w.flood_done()
    return Run(w.cpu(), rate, flood, made=FLOOD)


def conntrack_events(node: str, out: Path, events: list[str]) -> subprocess.Popen[bytes]:
    """`conntrack -E` in ``node`` (with ``events``, e.g. ``-e NEW``), printing to ``out``,
    with a 256 MiB socket buffer."""
    return subprocess.Popen(["ip", "netns", "exec", node, "conntrack", "-E", *events,
                             "-b", str(256 << 20)], stdout=out.open("w"),
                            stderr=subprocess.DEVNULL)


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


FLOOR = "listener that keeps nothing"
SO_ATTACH_FILTER = 26


def floor_listener(node: str) -> ConntrackSource:
    """The agent's own subscription (NEW and DESTROY groups) with a classic BPF filter
    (``ret #0``) attached before it binds, dropping every message before it is queued:
    what the kernel spends on conntrack events for any listener."""
    ret0 = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K
    prog = struct.pack("@HP", 1, ctypes.addressof(ret0))  # struct sock_fprog, native
    return ConntrackSource(node, attach=lambda s: s.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, prog))


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


def tree_at(commit: str, tmp: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes ``natlens`` the code of ``commit``
    (ahead of the editable install, whose finder Python asks last)."""
    src = tmp / f"src-{commit}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = tmp / f"py-{commit}" / "natlens"
    pkg.mkdir(parents=True)
    for item in (src / "natlens").iterdir():
        (pkg / item.name).symlink_to(item)
    for sub in ("agent", "collector", "proto", "lab"):
        (pkg / sub).symlink_to(src / sub)
    return pkg.parent


class Natlens:
    """A collector and an agent (``args``) on ``node``, started; ``watching`` waits
    until the agent has subscribed. ``tree``: run them from that code (``tree_at``)."""

    def __init__(self, node: str, tmp: Path, name: str, args: list[str],
                 tree: Path | None = None) -> None:
        self.db = tmp / f"{name.replace(' ', '_')}-{time.monotonic_ns()}.db"
        self.bpffs = tmp / "bpffs"
        self.bpffs.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # -P: without it `-m` puts the working directory first on sys.path, and run
        # from the checkout that is this tree's natlens, whatever PYTHONPATH says (until
        # this was found, every BEFORE run measured this tree twice).
        nat = [sys.executable, "-P", "-m", "natlens"]
        env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
        if tree:
            where = subprocess.run([sys.executable, "-P", "-c", "import natlens.agent; "
                                    "print(natlens.agent.__file__)"], env=env, text=True,
                                   capture_output=True, check=True).stdout.strip()
            if not where.startswith(str(tree)):
                raise RuntimeError(f"the agent of {tree} would run from {where}")
        self.logs = (tmp / "collector.log", tmp / "agent.log")
        self.col = subprocess.Popen([*nat, "collector", "--insecure", "--db", str(self.db),
                                     "--listen", f"127.0.0.1:{port}"],
                                    stdout=subprocess.PIPE, stderr=self.logs[0].open("w"),
                                    text=True, env=env)
        assert self.col.stdout and self.col.stdout.readline().startswith("listening")
        self.ag = subprocess.Popen([*nat, "agent", "--insecure",
                                    "--collector", f"127.0.0.1:{port}", "--node", "n",
                                    "--netns", node, "--pin-root", str(self.bpffs),
                                    "--counters-interval", "1", *args],
                                   stderr=self.logs[1].open("w"), env=env)

    def watching(self) -> None:
        """Flood only once the agent watches: bcc compiles the program first (4 s or
        more on a busy machine), and connections made before it subscribes are in the
        table, not in its counts (the startup dump stores them as a snapshot)."""
        deadline = time.monotonic() + 60
        while not any(m in self.logs[1].read_text() for m in READY):
            if time.monotonic() > deadline or self.ag.poll() is not None:
                raise RuntimeError(f"agent not ready: {self.logs[1].read_text()[-500:]}")
            time.sleep(0.1)

    def counted(self) -> int:
        try:
            with sqlite3.connect(self.db) as c:
                n = c.execute("SELECT COUNT(*) FROM decisions WHERE event='new' AND "
                              "source IN ('netlink', 'pcap')").fetchone()[0]
                if "counters" in {r[0] for r in c.execute(
                        "SELECT name FROM sqlite_master WHERE type='table'")}:
                    n += c.execute("SELECT COALESCE(SUM(connections),0) FROM counters"
                                   ).fetchone()[0]
                return int(n)
        except sqlite3.Error:
            return 0

    def lost(self) -> int:
        """Every loss the agent reported (overflow, capture drops, map full, malformed)."""
        with sqlite3.connect(self.db) as c:
            return int(c.execute("SELECT COALESCE(SUM(count),0) FROM lost_events"
                                 ).fetchone()[0])

    def stop(self) -> None:
        """SIGTERM both; one still running 30 s later is killed and reported (a hang
        is a defect to see, not to wait on), and bpffs is unmounted either way."""
        hung = []
        try:
            for name, p in (("agent", self.ag), ("collector", self.col)):
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    hung.append(f"natlens {name}")
                    p.kill()
                    p.wait()
        finally:
            subprocess.run(["umount", str(self.bpffs)], check=True)
        if hung:
            raise RuntimeError(f"did not exit within 30 s of SIGTERM: {', '.join(hung)}")


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


def build_flood(pod: str, tmp: Path) -> Path:
    """FLOOD SYNs from the client pod ``pod`` to the seed VIP, built once (synflood.py)."""
    packets = tmp / "syn.bin"
    subprocess.run([sys.executable, synflood.__file__, "build", str(packets), client_ip(pod),
                    VIP, str(VIP_PORT), str(FLOOD)], check=True)
    return packets


def client_ip(pod_ns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", pod_ns, "ip", "-4", "-o", "addr", "show",
                          "dev", "eth0"], capture_output=True, text=True, check=True).stdout
    return out.split()[3].split("/")[0]


def main() -> None:
    sc = load_scenario(SEED)
    st = topology.up(sc, str(SEED))
    pod = st.pods[CLIENT]
    node = st.nodes["k8s-node2"]
    base: list[Run] = []
    refs: dict[str, list[Run]] = {"conntrack -E -e NEW": [], "conntrack -E": [], FLOOR: []}
    configs: dict[str, tuple[list[str], str]] = {k: (v, "") for k, v in CONFIGS.items()}
    if BEFORE:
        configs.update({f"{k} @{BEFORE}": (v, BEFORE) for k, v in CONFIGS.items()})
    res: dict[str, list[Run]] = {k: [] for k in configs}
    try:
        with tempfile.TemporaryDirectory() as d:
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
    finally:
        topology.down(st)
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
