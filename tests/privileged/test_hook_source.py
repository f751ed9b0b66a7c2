"""The hook source end to end on the seed lab: floods counted by the BPF netfilter
program, checked against a reference that does not use conntrack at all — a counting
rule in each endpoint pod's INPUT chain counts the SYNs that arrived, one per DNAT
decision (every SYN of the flood has its own source port)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
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

from natlens import netns
from natlens.agent.sources.hook import hook_pin

from .helpers import (
    CLIENT,
    NATLENS,
    free_port,
    natlens,
    report_of,
    start,
    traffic,
    wait_for,
    write_scenario,
)

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


def send(pod_ns: str, tmp: Path, src: str, vip: str, port: int, n: int,
         first_port: int = 1024, proto: str = "tcp") -> float:
    """n SYNs (or UDP datagrams) from ``pod_ns``, each with its own source port, each a
    new connection: two raw-socket senders (bench/synflood.py) at once, one per core,
    started together once both have their packets loaded. The rate reached."""
    halves = [(first_port, n // 2), (first_port + n // 2, n - n // 2)]
    procs = []
    for first, count in halves:
        packets = tmp / f"flood-{first}.bin"
        subprocess.run([sys.executable, str(SYNFLOOD), "build", str(packets), src, vip,
                        str(port), str(count), str(first), proto], check=True)
        p = subprocess.Popen(["ip", "netns", "exec", pod_ns, sys.executable, str(SYNFLOOD),
                              "send", str(packets), vip, "0"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout and p.stdout.readline().strip() == "ready"
        procs.append(p)
    t0 = time.monotonic()
    for p in procs:
        assert p.stdin
        p.stdin.write("go\n")
        p.stdin.flush()
    sent = 0
    for p in procs:
        out, _ = p.communicate(timeout=300)
        f = out.split()  # sent N in SECONDS s cpu SECONDS s
        assert f[0] == "sent" and p.returncode == 0, out
        sent += int(f[1])
    assert sent == n
    return n / (time.monotonic() - t0)


def flood(lab: dict[str, Any], tmp: Path, n: int, first_port: int = 1024,
          pod: str = f"istio-demo/{CLIENT}", src: str = CLIENT_IP) -> float:
    """``send`` to the seed's bill-service."""
    return send(lab["pods"][pod], tmp, src, VIP, PORT, n, first_port)


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

    def open_entries(self, node: str = NODE) -> int:
        """Entries of the pinned `open` map (record ids kept for the close filter)."""
        pin = Path(hook_pin(str(self.bpffs), node, self.lab["nodes"][node]), "open")
        out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin)],
                             check=True, capture_output=True, text=True).stdout
        return len(json.loads(out))

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
    # Without --closes (the default) nothing reads record ids back: none are kept.
    assert run.open_entries() == 0
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


# Both families, TCP and UDP: a dual-stack web service (TCP, answering) and a
# dual-stack DNS service (UDP, answering), the client on node-a.
MIXED = {
    "name": "hook-mixed",
    "proxyMode": "iptables",
    "nodes": [
        {"name": "node-a", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"], "pods": [
            {"name": "client", "namespace": "t", "ips": ["10.244.1.10", "fd00:10:244:1::a"],
             "labels": {"app": "client"}},
            {"name": "web-1", "namespace": "t", "ips": ["10.244.1.20", "fd00:10:244:1::14"],
             "labels": {"app": "web"}, "serve": {"port": 8080, "body": "web-1"}},
            {"name": "dns-1", "namespace": "t", "ips": ["10.244.1.30", "fd00:10:244:1::1e"],
             "labels": {"app": "dns"}, "serve": {"port": 53, "body": "dns-1",
                                                 "protocol": "UDP"}}]},
        {"name": "node-b", "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"], "pods": [
            {"name": "web-2", "namespace": "t", "ips": ["10.244.2.20", "fd00:10:244:2::14"],
             "labels": {"app": "web"}, "serve": {"port": 8080, "body": "web-2"}},
            {"name": "dns-2", "namespace": "t", "ips": ["10.244.2.30", "fd00:10:244:2::1e"],
             "labels": {"app": "dns"}, "serve": {"port": 53, "body": "dns-2",
                                                 "protocol": "UDP"}}]}],
    "services": [
        {"name": "web", "namespace": "t", "clusterIPs": ["10.96.0.80", "fd00:10:96::50"],
         "selector": {"app": "web"},
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        {"name": "dns", "namespace": "t", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
         "selector": {"app": "dns"},
         "ports": [{"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}]}],
    "traffic": [],
}
# (family, protocol) -> (client address, VIP, service port, endpoint pods, target port)
FLOODS = {
    ("ipv4", "tcp"): ("10.244.1.10", "10.96.0.80", 80, ("web-1", "web-2"), 8080),
    ("ipv6", "tcp"): ("fd00:10:244:1::a", "fd00:10:96::50", 80, ("web-1", "web-2"), 8080),
    ("ipv4", "udp"): ("10.244.1.10", "10.96.0.10", 53, ("dns-1", "dns-2"), 53),
    ("ipv6", "udp"): ("fd00:10:244:1::a", "fd00:10:96::a", 53, ("dns-1", "dns-2"), 53),
}


@pytest.fixture(scope="module")
def mixed_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path = write_scenario(tmp_path_factory.mktemp("mixed"), MIXED)
    info = json.loads(natlens("lab", "up", path).stdout)
    try:
        yield info
    finally:
        natlens("lab", "down", path, "--prefix", info["prefix"])


def arrived(lab: dict[str, Any], pod: str, family: str, proto: str, port: int) -> int:
    """What the counting rule in ``pod``'s INPUT chain has seen so far."""
    tool = "ip6tables" if family == "ipv6" else "iptables"
    out = subprocess.run(["ip", "netns", "exec", lab["pods"][f"t/{pod}"], tool, "-L", "INPUT",
                          "-v", "-x", "-n"], check=True, capture_output=True,
                         text=True).stdout
    return sum(int(x.split()[0]) for x in out.splitlines()
               if f"{proto} dpt:{port}" in x)


@pytest.mark.parametrize(("family", "proto"), list(FLOODS))
def test_floods_in_both_families_tcp_and_udp_are_exact(
        mixed_lab: dict[str, Any], tmp_path: Path, bpffs: Path, family: str,
        proto: str) -> None:
    src, vip, port, pods, target = FLOODS[family, proto]
    tool = "ip6tables" if family == "ipv6" else "iptables"
    match = ["-p", "tcp", "--syn"] if proto == "tcp" else ["-p", "udp"]
    for pod in pods:
        subprocess.run(["ip", "netns", "exec", mixed_lab["pods"][f"t/{pod}"], tool, "-I",
                        "INPUT", *match, "--dport", str(target)], check=True)
    before = {p: arrived(mixed_lab, p, family, proto, target) for p in pods}
    run = Run(mixed_lab, tmp_path, bpffs)
    try:
        run.start_agent(node="node-a")
        rate = send(mixed_lab["pods"]["t/client"], tmp_path, src, vip, port, FLOOD,
                    proto=proto)
        rep = run.report()
    finally:
        run.close()
    ips = {p["name"]: p["ips"] for n in MIXED["nodes"] for p in n["pods"]}  # type: ignore
    want = {}
    for p in pods:
        ip = ips[p][1 if family == "ipv6" else 0]
        key = f"[{ip}]:{target}" if family == "ipv6" else f"{ip}:{target}"
        want[key] = arrived(mixed_lab, p, family, proto, target) - before[p]
    (entry,) = [s for s in rep["services"] if s["vip"] == vip]
    got = {e["endpoint"]: e["observed"] for e in entry["endpoints"] if e["observed"]}
    assert sum(want.values()) == FLOOD
    assert got == want
    assert rep["lost"] == []
    db = sqlite_utils.Database(run.db)
    stored = db.execute("SELECT COUNT(*) FROM decisions WHERE vip=? AND event='new'",
                        [vip]).fetchone()[0]
    assert stored == FLOOD
    assert rate >= 20_000, f"the flood reached only {rate:.0f}/s"


def test_udp_queries_racing_from_one_port_are_exact_or_reported(
        mixed_lab: dict[str, Any], tmp_path: Path, bpffs: Path) -> None:
    """DNS-style queries from one source port on two threads at once: two packets of
    one flow can each make an entry on its own CPU, and conntrack merges (or drops) the
    loser at confirmation, after the program counted it. Every count is then either a
    conntrack entry or reported as a clash."""
    vip, rounds = "10.96.0.10", 3000
    client, node = mixed_lab["pods"]["t/client"], mixed_lab["nodes"]["node-a"]
    subprocess.run(["ip", "netns", "exec", node, "conntrack", "-F"], capture_output=True)
    run = Run(mixed_lab, tmp_path, bpffs)
    try:
        run.start_agent(node="node-a")
        gate = threading.Barrier(2)

        def query(first: int) -> None:
            with netns.entered(client):
                for i in range(rounds):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                        s.bind(("10.244.1.10", first + i))
                        gate.wait()
                        s.sendto(b"?", (vip, 53))

        threads = [threading.Thread(target=query, args=(20_000,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        out = subprocess.run(["ip", "netns", "exec", node, "conntrack", "-L", "-p", "udp",
                              "--orig-dst", vip], capture_output=True, text=True,
                             check=True).stdout
        entries = sum(1 for line in out.splitlines() if line.startswith("udp"))
        rep = run.report()
    finally:
        run.close()
    (entry,) = [s for s in rep["services"] if s["vip"] == vip]
    clashes = sum(x["count"] for x in rep["lost"] if x["reason"] == "conntrack-clash")
    assert entries == rounds  # one entry per source port
    assert entry["total"] == entries + clashes, (entry["total"], entries, clashes)


def test_closes_give_bytes_durations_and_each_records_end(run: Run) -> None:
    """Real connections through the service, then their entries deleted (each a
    DESTROY event): the close filter adds bytes and durations to the counters, and each
    connection's one row in query decisions gets its end."""
    run.start_agent("--closes")
    tally = traffic(run.lab, 200)
    time.sleep(0.5)
    assert run.open_entries() == 200  # each record's id, kept for its close
    subprocess.run(["ip", "netns", "exec", run.lab["nodes"][NODE], "conntrack", "-D",
                    "--orig-dst", VIP], capture_output=True, check=True)
    time.sleep(1)
    assert run.open_entries() == 0
    rep = run.report()
    assert observed(rep) == tally
    db = sqlite_utils.Database(run.db)
    closed, rbytes, duration = db.execute(
        "SELECT SUM(closed), SUM(reply_bytes), SUM(duration_ns) FROM counters "
        "WHERE vip=?", [VIP]).fetchone()
    assert closed == 200 and rbytes > 200 * 20 and duration > 0
    r = natlens("query", "decisions", "--db", str(run.db), "-o", "json")
    rows = json.loads(r.stdout)
    assert len(rows) == 200 and all(x["closed"] for x in rows), rows[:3]
    assert all(x["reply_bytes"] > 0 and x["end_ns"] > x["time_ns"] for x in rows)
    assert {x["ct_id"] for x in rows} != {0}
