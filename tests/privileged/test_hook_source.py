"""The hook source end to end on the seed lab: floods counted by the BPF netfilter
program, checked against a reference that does not use conntrack at all — a counting
rule in each endpoint pod's INPUT chain counts the SYNs that arrived, one per DNAT
decision (every SYN of the flood has its own source port)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from .helpers import CLIENT, NATLENS, free_port, report_of, start, wait_for

pytestmark = pytest.mark.privileged
VIP, PORT, TARGET = "10.1.122.241", 9999, 80
NODE = "k8s-node2"
ENDPOINTS = {"istio-demo/bill-service-v1-765cb46975-hmtmd": "10.244.1.168:80",
             "istio-demo/bill-service-v2-6854775ffc-9n6jv": "10.244.2.74:80"}
FLOOD = 25_000
CLIENT_IP = "10.244.1.169"
SYNFLOOD = Path(__file__).parents[2] / "bench" / "synflood.py"


@contextmanager
def syn_counters(lab: dict[str, Any]) -> Iterator[dict[str, int]]:
    """A counting rule in each endpoint pod's INPUT chain; on exit, the SYNs each
    endpoint received."""
    rule = ["INPUT", "-p", "tcp", "--syn", "--dport", str(TARGET)]
    for pod in ENDPOINTS:
        subprocess.run(["ip", "netns", "exec", lab["pods"][pod], "iptables", "-I", *rule],
                       check=True)
    got: dict[str, int] = {}
    yield got
    for pod, ep in ENDPOINTS.items():
        out = subprocess.run(["ip", "netns", "exec", lab["pods"][pod], "iptables", "-L",
                              "INPUT", "-v", "-x", "-n"], check=True, capture_output=True,
                             text=True).stdout
        (line,) = [x for x in out.splitlines() if f"dpt:{TARGET}" in x]
        got[ep] = int(line.split()[0])


def flood(lab: dict[str, Any], tmp: Path, n: int, first_port: int = 1024,
          pod: str = f"istio-demo/{CLIENT}", src: str = CLIENT_IP) -> float:
    """n SYNs from ``pod`` as fast as one raw socket sends them (bench/synflood.py),
    each with its own source port: each a new connection. The rate reached."""
    packets = tmp / f"syn-{first_port}.bin"
    subprocess.run([sys.executable, str(SYNFLOOD), "build", str(packets), src, VIP,
                    str(PORT), str(n), str(first_port)], check=True)
    r = subprocess.run(["ip", "netns", "exec", lab["pods"][pod], sys.executable,
                        str(SYNFLOOD), "send", str(packets), VIP, "0"], input="go\n",
                       capture_output=True, text=True, timeout=300, check=True)
    f = r.stdout.split()  # ready sent N in SECONDS s cpu SECONDS s
    assert f[:3] == ["ready", "sent", str(n)], r.stdout
    return n / float(f[4])


class Run:
    """A collector and a hook agent on node2, its pins in the test's bpffs."""

    def __init__(self, lab: dict[str, Any], tmp: Path, bpffs: Path) -> None:
        self.lab, self.tmp, self.bpffs = lab, tmp, bpffs
        self.db = tmp / "natlens.db"
        self.port = free_port()
        self.collector = start(["collector", "--insecure", "--db", str(self.db), "--listen",
                                f"127.0.0.1:{self.port}"], tmp / "collector.log")
        assert self.collector.stdout and self.collector.stdout.readline().startswith("listen")
        self.agents: list[subprocess.Popen[str]] = []

    def start_agent(self, *args: str, node: str = NODE) -> Path:
        log = self.tmp / f"agent{len(self.agents) + 1}.log"
        self.agents.append(start(
            ["agent", "--insecure", "--collector", f"127.0.0.1:{self.port}", "--node", node,
             "--netns", self.lab["nodes"][node], "--source", "hook", "--pin-root",
             str(self.bpffs), "--counters-interval", "0.2", *args], log))
        wait_for(lambda: "source hook:" in log.read_text(), 60)
        return log

    def stop_agents(self) -> None:
        for i, a in enumerate(self.agents):
            if a.poll() is None:
                a.terminate()
                assert a.wait(timeout=120) == 0, (self.tmp / f"agent{i + 1}.log").read_text()

    def report(self) -> dict[str, Any]:
        self.stop_agents()
        self.collector.terminate()
        self.collector.wait(timeout=60)
        return report_of(self.db)

    def rows(self, node: str = NODE) -> int:
        db = sqlite_utils.Database(self.db)
        return int(db.execute("SELECT COUNT(*) FROM decisions WHERE event='new' AND vip=? "
                              "AND node=?", [VIP, node]).fetchone()[0])

    def rate(self, node: str = NODE) -> float:
        """Connections per second over the flood, from the records' own times."""
        db = sqlite_utils.Database(self.db)
        n, first, last = db.execute("SELECT COUNT(*), MIN(time_ns), MAX(time_ns) FROM "
                                    "decisions WHERE vip=? AND node=?", [VIP, node]).fetchone()
        return float(n / ((last - first) / 1e9))

    def close(self) -> None:
        for p in (*self.agents, self.collector):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def run(lab: dict[str, Any], tmp_path: Path, bpffs: Path) -> Iterator[Run]:
    r = Run(lab, tmp_path, bpffs)
    try:
        yield r
    finally:
        r.close()


def observed(rep: dict[str, Any], node: str = NODE) -> dict[str, int]:
    return {e["endpoint"]: e["observed"] for s in rep["services"] if s["node"] == node
            for e in s["endpoints"] if e["observed"]}


def test_a_flood_is_counted_and_recorded_exactly(run: Run) -> None:
    log = run.start_agent()
    with syn_counters(run.lab) as ref:
        rate = flood(run.lab, run.tmp, FLOOD)
    rep = run.report()
    assert sum(ref.values()) == FLOOD
    assert observed(rep) == ref
    assert rep["lost"] == []
    assert run.rows() == FLOOD  # one record per connection, by default
    assert "bpf_ring_full=0" in log.read_text()
    assert rate >= 20_000, f"the flood reached only {rate:.0f}/s"


def test_kill_9_and_a_flood_while_down_are_counted_and_recorded(run: Run) -> None:
    """The link and ring are pinned: what the kernel counted and recorded while no agent
    ran is there for the next one, after the entries themselves are gone."""
    with syn_counters(run.lab) as ref:
        run.start_agent()
        sender = threading.Thread(target=flood, args=(run.lab, run.tmp, FLOOD))
        sender.start()
        time.sleep(0.3)
        run.agents[0].send_signal(signal.SIGKILL)  # mid-flood
        run.agents[0].wait()
        sender.join()
        flood(run.lab, run.tmp, FLOOD, first_port=30_000)  # no agent at all
        time.sleep(15)  # the entries close and expire: no table holds them any more
        assert conntrack_count(run.lab) == 0
        log = run.start_agent()
    rep = run.report()
    assert sum(ref.values()) == 2 * FLOOD
    assert observed(rep) == ref
    assert rep["lost"] == []
    m = re.search(r"; (\d+) records made while no agent ran", log.read_text())
    assert m and int(m.group(1)) >= FLOOD, log.read_text()
    db = sqlite_utils.Database(run.db)
    down = db.execute("SELECT COUNT(DISTINCT client_port) FROM decisions WHERE vip=? AND "
                      "client_port >= 30000", [VIP]).fetchone()[0]
    assert down == FLOOD  # every connection of the second flood, one row each


def conntrack_count(lab: dict[str, Any]) -> int:
    out = subprocess.run(["ip", "netns", "exec", lab["nodes"][NODE], "conntrack", "-L",
                          "--orig-dst", VIP], capture_output=True, text=True,
                         check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("tcp"))


def test_exact_with_conntrack_events_switched_off(run: Run) -> None:
    ns = run.lab["nodes"][NODE]
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                    "net.netfilter.nf_conntrack_events=0"], check=True)
    run.start_agent()
    with syn_counters(run.lab) as ref:
        flood(run.lab, run.tmp, FLOOD)
    rep = run.report()
    assert observed(rep) == ref and sum(ref.values()) == FLOOD
    assert run.rows() == FLOOD


def test_two_nodes_on_one_host_count_only_their_own(run: Run) -> None:
    """node1's agent sees node1's decisions (a flood from the v2 pod there), node2's
    its own: each link lives in its node's namespace."""
    run.start_agent()
    run.start_agent(node="k8s-node1")
    with syn_counters(run.lab) as ref:
        flood(run.lab, run.tmp, 10_000)
        flood(run.lab, run.tmp, 6_000, pod="istio-demo/bill-service-v2-6854775ffc-9n6jv",
              src="10.244.2.74")
    rep = run.report()
    two, one = observed(rep, NODE), observed(rep, "k8s-node1")
    assert sum(two.values()) == 10_000 and sum(one.values()) == 6_000
    assert {k: two.get(k, 0) + one.get(k, 0) for k in ref} == ref
    assert run.rows(NODE) == 10_000 and run.rows("k8s-node1") == 6_000


def test_aggregate_only_counts_exactly_and_records_nothing(run: Run) -> None:
    log = run.start_agent("--aggregate-only")
    with syn_counters(run.lab) as ref:
        flood(run.lab, run.tmp, FLOOD)
    rep = run.report()
    assert observed(rep) == ref
    assert run.rows() == 0
    assert "bpf_recorded=0" in log.read_text()


def test_sampled_records_and_exact_counts(run: Run) -> None:
    run.start_agent("--sample", "10")
    with syn_counters(run.lab) as ref:
        flood(run.lab, run.tmp, FLOOD)
    rep = run.report()
    assert observed(rep) == ref
    (sampling,) = [x for x in rep["lost"] if x["reason"] == "sampling"]
    assert sampling["count"] + run.rows() == FLOOD
    assert 1_500 <= run.rows() <= 3_500  # 1 in 10 of 25,000, by a hash of the tuple


def test_hook_that_cannot_load_fails_in_one_line(lab: dict[str, Any], tmp_path: Path,
                                                 bpffs: Path) -> None:
    env = {**os.environ, "NATLENS_BPF_OBJECT": str(tmp_path / "missing.bpf.o")}
    r = subprocess.run([*NATLENS, "agent", "--insecure", "--collector", "127.0.0.1:1",
                        "--node", NODE, "--netns", lab["nodes"][NODE], "--source", "hook",
                        "--pin-root", str(bpffs)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line == (f"natlens: error: agent: --source hook: {tmp_path}/missing.bpf.o is not "
                    "built (scripts/build_bpf.sh compiles it; make install runs it)"), line


def test_print_bpf_prints_the_hook_program() -> None:
    r = subprocess.run([*NATLENS, "agent", "--source", "hook", "--print-bpf"],
                       capture_output=True, text=True, timeout=60, check=True)
    assert 'SEC("netfilter")' in r.stdout and "natlens_hook" in r.stdout
