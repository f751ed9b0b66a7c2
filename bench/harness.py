"""What the benchmarks share: exact CPU and memory readers, a free port, the seed lab up
and down, a SYN flood from its client pod, the reference watchers (``conntrack -E`` and
a listener that keeps nothing), a collector and an agent started and waited for, and an
older commit's tree to run beside this one.

Every benchmark is a script of its own (``python bench/NAME.py``) that imports this
module and nothing from another script or from ``tests/``. CPU is measured exactly, not
sampled: with tick-based accounting (this kernel: CONFIG_TICK_CPU_ACCOUNTING, HZ=250)
the user and system columns of /proc/stat are 4 ms samples, so whole-machine busy time
is read from the exact NO_HZ idle clock instead, and a process's time from its
scheduler clock. The flood's settings come from the environment (FLOOD, RATE, ANSWER,
TAIL) so that every flood benchmark reads them alike.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from natlens.agent.sources.conntrack import ConntrackSocket
from natlens.lab import topology
from natlens.lab.scenario import load_scenario
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed-bill-service.yaml"
SYNFLOOD = Path(__file__).with_name("synflood.py")  # a program, run in the client pod
VIP, VIP_PORT, TARGET_PORT = "10.1.122.241", 9999, 80
CLIENT = "istio-demo/front-tomcat-v1-7f8c94c6c8-lfz5m"
NODE = "k8s-node2"  # the client's node: where its connections are decided

FLOOD = int(os.environ.get("FLOOD", "60000"))
RATE = int(os.environ.get("RATE", "30000"))  # SYNs per second; 0: as fast as it goes
ANSWER = os.environ.get("ANSWER") == "1"  # endpoints answer (SYN-ACK, then the RST)
TAIL = float(os.environ.get("TAIL", "6"))  # seconds a measured window runs past a flood
NCPU = os.cpu_count() or 1
USER_HZ = os.sysconf("SC_CLK_TCK")
FLOOR = "listener that keeps nothing"
# the agent's log says so
READY = ("conntrack: subscribed", "source pcap: capturing", "source hook:")


# ---------------------------------------------------------------- readers

def busy() -> float:
    """Whole-machine busy seconds so far (any origin): wall x CPUs minus the exact idle,
    and minus steal (time the hypervisor gave this VM's CPUs to others), which is no
    one's work here."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return time.monotonic() * NCPU - (v[3] + v[4] + v[7]) / USER_HZ


def proc_cpu(pid: int) -> float:
    """A process's exact CPU seconds, all threads (MAKE_PROCESS_CPUCLOCK(pid, SCHED))."""
    return time.clock_gettime((~pid << 3) | 2)


class Timed(NamedTuple):
    wall: float  # seconds
    cpu: float   # user + system seconds of the process (and what it waited for)
    stdout: str


def timed(argv: list[str], stdout: int | None = subprocess.PIPE) -> Timed:
    """Run ``argv`` to its end: its wall-clock time and its own CPU time (wait4's
    rusage), which a busy or stolen-from machine disturbs less than the clock."""
    t = time.perf_counter()
    with subprocess.Popen(argv, stdout=stdout, text=True) as p:
        out = p.stdout.read() if p.stdout is not None else ""
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, argv)
    return Timed(time.perf_counter() - t, usage.ru_utime + usage.ru_stime, out)


def rss_mib(pid: int | None = None) -> float:
    """Resident memory in MiB of ``pid`` (this process by default); 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return 0.0
    return next(int(ln.split()[1]) for ln in text.splitlines()
                if ln.startswith("VmRSS:")) / 1024


def forks() -> int:
    """Processes created on the machine since boot."""
    with open("/proc/stat") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("processes "))


def memlock_mib(fd: int) -> float:
    """Kernel memory charged to a BPF map (its fd's memlock)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settle(count: Callable[[], int], timeout: float = 120) -> int:
    """``count()`` once it has not moved for 1.5 s."""
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


# ---------------------------------------------------------------- the lab

@contextmanager
def seed_lab() -> Iterator[topology.LabState]:
    """The seed scenario built, and removed whatever happens."""
    st = topology.up(load_scenario(SEED), str(SEED))
    try:
        yield st
    finally:
        topology.down(st)


def clear(node_ns: str) -> None:
    """Empty the table before a watcher starts: no startup snapshot, no flush events
    inside a measured window; byte counters and timestamps off (a watcher that wants
    them switches them on)."""
    subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-F"], capture_output=True)
    for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
        subprocess.run(["ip", "netns", "exec", node_ns, "sysctl", "-qw",
                        f"net.netfilter.{key}=0"], check=True)
    time.sleep(0.5)


def silence_endpoints(st: topology.LabState) -> None:
    """The endpoints drop the flood's SYNs: no handshake, no RST, one DNAT each."""
    rule = ("table inet natlens_bench {\n chain pre {\n"
            "  type filter hook prerouting priority -300;\n"
            f"  tcp dport {TARGET_PORT} tcp flags & (syn | ack) == syn drop\n }}\n}}\n")
    for name, ns in st.pods.items():
        if name != CLIENT:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rule,
                           text=True, check=True)


def client_ip(pod_ns: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", pod_ns, "ip", "-4", "-o", "addr", "show",
                          "dev", "eth0"], capture_output=True, text=True, check=True).stdout
    return out.split()[3].split("/")[0]


def table_count(node_ns: str) -> int:
    """Entries to the ClusterIP in the node's conntrack table: right after a flood into
    a flushed table, the connections the kernel made in this very run."""
    out = subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-L", "-p", "tcp",
                          "--orig-dst", VIP], capture_output=True, text=True,
                         check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("tcp"))


# ---------------------------------------------------------------- the flood

def build_flood(pod: str, tmp: Path, count: int = FLOOD) -> Path:
    """``count`` SYNs from the client pod ``pod`` to the seed VIP, built once, each with
    its own source port (synflood.py)."""
    packets = tmp / "syn.bin"
    subprocess.run([sys.executable, str(SYNFLOOD), "build", str(packets), client_ip(pod),
                    VIP, str(VIP_PORT), str(count)], check=True)
    return packets


class Flooder:
    """synflood.py in the client pod, started and ready (packets loaded) before ``run``
    starts the clock."""

    def __init__(self, pod_ns: str, packets: Path, rate: int = RATE) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, sys.executable, str(SYNFLOOD), "send",
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


class Window:
    """Whole-machine CPU over a window that ends TAIL seconds after the flood, in every
    run: the machine's background load then weighs the same on each. Less this
    script's own CPU (its polling of files and databases)."""

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


# ---------------------------------------------------------------- reference watchers

def conntrack_events(node: str, out: Path, events: list[str]) -> subprocess.Popen[bytes]:
    """`conntrack -E` in ``node`` (with ``events``, e.g. ``-e NEW``), printing to ``out``,
    with a 256 MiB socket buffer."""
    return subprocess.Popen(["ip", "netns", "exec", node, "conntrack", "-E", *events,
                             "-b", str(256 << 20)], stdout=out.open("w"),
                            stderr=subprocess.DEVNULL)


SO_ATTACH_FILTER = 26


def floor_listener(node: str) -> ConntrackSocket:
    """The agent's own subscription (NEW and DESTROY groups) with a classic BPF filter
    (``ret #0``) attached before it binds, dropping every message before it is queued:
    what the kernel spends on conntrack events for any listener."""
    ret0 = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K
    prog = struct.pack("@HP", 1, ctypes.addressof(ret0))  # struct sock_fprog, native
    return ConntrackSocket(node, attach=lambda s: s.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, prog))


# ---------------------------------------------------------------- natlens itself

def tree_at(commit: str, tmp: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes ``natlens`` the code of ``commit``
    (ahead of the editable install, whose finder Python asks last)."""
    src = tmp / f"src-{commit}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    if (src / "scripts" / "build_bpf.sh").exists():  # the hook's object, as make install
        subprocess.run(["bash", str(src / "scripts" / "build_bpf.sh")], check=True)
    pkg = tmp / f"py-{commit}" / "natlens"
    pkg.mkdir(parents=True)
    for item in (src / "natlens").iterdir():
        (pkg / item.name).symlink_to(item)
    for sub in ("agent", "collector", "proto", "lab"):
        (pkg / sub).symlink_to(src / sub)
    return pkg.parent


def module_at(commit: str, path: str) -> types.ModuleType:
    """One file of natlens (``path`` in the repository) as it was at ``commit``, loaded as
    a module of its own beside this tree's."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(f"{Path(path).stem}_{commit}")
    sys.modules[mod.__name__] = mod  # its dataclasses look their module up
    exec(compile(src, f"{commit}:{path}", "exec"), mod.__dict__)
    return mod


def natlens_cmd(tree: Path | None = None) -> tuple[list[str], dict[str, str] | None]:
    """The command line and environment that run natlens (from ``tree``, if given).

    -P: without it `-m` puts the working directory first on sys.path, and run from the
    checkout that is this tree's natlens, whatever PYTHONPATH says."""
    if tree is None:
        return [sys.executable, "-P", "-m", "natlens"], None
    env = dict(os.environ, PYTHONPATH=str(tree))
    where = subprocess.run([sys.executable, "-P", "-c", "import natlens.agent; "
                            "print(natlens.agent.__file__)"], env=env, text=True,
                           capture_output=True, check=True).stdout.strip()
    if not where.startswith(str(tree)):
        raise RuntimeError(f"the agent of {tree} would run from {where}")
    return [sys.executable, "-P", "-m", "natlens"], env


def start_collector(db: Path, log: Path, extra: list[str] | None = None,
                    tree: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    """A ``natlens collector`` on a free loopback port, started (it said so)."""
    nat, env = natlens_cmd(tree)
    port = free_port()
    p = subprocess.Popen([*nat, "collector", "--insecure", "--db", str(db), "--listen",
                          f"127.0.0.1:{port}", *(extra or [])], stdout=subprocess.PIPE,
                         stderr=log.open("w"), text=True, env=env)
    assert p.stdout is not None
    if not p.stdout.readline().startswith("listening"):
        p.kill()
        raise RuntimeError(f"collector did not start: {log.read_text()[-500:]}")
    return p, port


class Natlens:
    """A collector and an agent (``args``) on ``node``, started; ``watching`` waits
    until the agent has subscribed. ``tree``: run them from that code (``tree_at``)."""

    def __init__(self, node: str, tmp: Path, name: str, args: list[str],
                 tree: Path | None = None) -> None:
        self.db = tmp / f"{name.replace(' ', '_')}-{time.monotonic_ns()}.db"
        self.bpffs = tmp / "bpffs"
        self.bpffs.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        self.logs = (tmp / "collector.log", tmp / "agent.log")
        self.col, port = start_collector(self.db, self.logs[0], tree=tree)
        nat, env = natlens_cmd(tree)
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
        """Connections the store counts: decisions of the user-space sources and the
        kernel counters' increases (read straight from the file: the collector runs)."""
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


# ---------------------------------------------------------------- stored data

def decision_rows(batches: int, per_batch: int) -> list[list[DecisionRow]]:
    """Decisions as an agent's batcher holds them: a busy client pod's connections to
    the seed service, alternating between its two endpoints."""
    return [[DecisionRow(1_700_000_000_000_000_000 + b * per_batch + i, "tcp",
                         f"10.244.{i % 7}.{(b * 31 + i) % 250}", (b * per_batch + i) % 65535,
                         VIP, VIP_PORT, "10.244.1.168" if i % 2 else "10.244.2.74",
                         TARGET_PORT, ct_id=b * per_batch + i, source=pb.SOURCE_NETLINK,
                         event=pb.EVENT_NEW) for i in range(per_batch)]
            for b in range(batches)]


def decision_batches(batches: int, per_batch: int) -> list[pb.Batch]:
    """The same as an agent ships them (columns)."""
    return [pb.Batch(agent_id="a", boot_id="b", seq=seq, node="n", columns=pack(rows))
            for seq, rows in enumerate(decision_rows(batches, per_batch), start=1)]
