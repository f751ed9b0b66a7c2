"""Nothing lost: faults between real agents and a real collector, with lab traffic as the
reference. Each test ends with the report's per-endpoint totals equal to the client
tally.

The collector runs in the lab's underlay namespace (an address on its bridge) and each
agent inside its node's namespace, so the agent's gRPC travels the lab's own network:
a partition is a DROP rule there, and the root namespace is never touched. (Agent
kill -9 is tested with the eBPF source in test_ebpf_agent.py: its pinned maps are what
make a restart exact.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import NATLENS, SERVICE, natlens, observed, traffic, wait_for

pytestmark = pytest.mark.privileged

COLLECTOR_IP = "172.31.255.254"
PORT = 7070


class Cluster:
    """The seed lab with a collector in the underlay and an agent in each node."""

    def __init__(self, lab: dict[str, Any], tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.underlay = f"{lab['prefix']}-underlay"
        subprocess.run(["ip", "-n", self.underlay, "addr", "add", f"{COLLECTOR_IP}/24", "dev",
                        "ul0"], check=True)
        self.db = tmp / "natlens.db"
        self.collector: subprocess.Popen[str] | None = None
        self.agents: dict[str, subprocess.Popen[str]] = {}
        self.restarts = 0

    def in_ns(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                stderr=log.open("a"), text=True, start_new_session=True)

    def start_collector(self, db: Path | None = None) -> None:
        self.restarts += 1
        self.collector = self.in_ns(self.underlay, [
            *NATLENS, "collector", "--insecure", "--db", str(db or self.db), "--listen",
            f"{COLLECTOR_IP}:{PORT}", "--maintenance-interval", "3600"],
            self.tmp / "collector.log")
        assert self.collector.stdout is not None
        line = self.collector.stdout.readline()
        assert line.startswith("listening"), (self.tmp / "collector.log").read_text()

    def start_agents(self, *extra: str) -> None:
        for node, ns in self.lab["nodes"].items():
            self.agents[node] = self.in_ns(ns, [
                *NATLENS, "agent", "--insecure", "--collector", f"{COLLECTOR_IP}:{PORT}",
                "--node", node, "--source", "netlink", "--rules-interval", "1",
                "--drain-timeout", "120", *extra], self.tmp / f"agent-{node}.log")

    def wait_rules(self) -> None:
        import sqlite3

        def both() -> bool:
            try:
                with sqlite3.connect(self.db, timeout=5) as c:
                    nodes = {r[0] for r in c.execute("SELECT node FROM rule_snapshots")}
            except sqlite3.Error:
                return False
            return nodes >= set(self.lab["nodes"])
        wait_for(both, 30)

    def kill9_collector(self) -> None:
        assert self.collector is not None
        os.killpg(self.collector.pid, signal.SIGKILL)
        self.collector.wait(timeout=10)

    def stop_agents(self) -> None:
        for p in self.agents.values():
            os.killpg(p.pid, signal.SIGTERM)
        for node, p in self.agents.items():
            assert p.wait(timeout=150) == 0, (self.tmp / f"agent-{node}.log").read_text()

    def report(self, db: Path | None = None) -> dict[str, Any]:
        r = natlens("report", "--db", str(db or self.db), "-o", "json")
        return dict(json.loads(r.stdout))

    def close(self) -> None:
        for p in [*self.agents.values(), *([self.collector] if self.collector else [])]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


@pytest.fixture
def cluster(lab: dict[str, Any], tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(lab, tmp_path)
    try:
        yield c
    finally:
        c.close()


def scrape(ns: str, url: str) -> dict[str, float]:
    """The agent's /metrics from inside its namespace, parsed by prometheus-client."""
    from prometheus_client.parser import text_string_to_metric_families

    text = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c",
                           f"import urllib.request; print(urllib.request.urlopen({url!r})"
                           ".read().decode())"], capture_output=True, text=True,
                          check=True).stdout
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for sm in fam.samples:
            out[sm.name] = out.get(sm.name, 0) + sm.value
    return out


def entry(report: dict[str, Any]) -> dict[str, Any]:
    (e,) = [s for s in report["services"] if s["node"] == "k8s-node2"]
    return dict(e)


def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


def test_collector_kill9_under_traffic_restarted_5s_later(cluster: Cluster) -> None:
    cluster.start_collector()
    cluster.start_agents()
    cluster.wait_rules()
    tallies: list[dict[str, int]] = []
    t = threading.Thread(target=lambda: tallies.append(traffic(cluster.lab, 1500)))
    t.start()
    time.sleep(0.8)
    cluster.kill9_collector()
    time.sleep(5)
    cluster.start_collector()
    t.join()
    tally = add(tallies[0], traffic(cluster.lab, 300))
    cluster.stop_agents()
    assert observed(entry(cluster.report())) == tally
    assert sum(tally.values()) == 1800


def test_a_60s_partition_then_healed(cluster: Cluster) -> None:
    cluster.start_collector()
    cluster.start_agents()
    cluster.wait_rules()
    before = traffic(cluster.lab, 300)
    drop = ["ip", "netns", "exec", cluster.underlay, "iptables", "-w", "-I", "INPUT", "-p",
            "tcp", "--dport", str(PORT), "-j", "DROP"]
    subprocess.run(drop, check=True)
    try:
        during = traffic(cluster.lab, 500)
        time.sleep(60)
    finally:
        subprocess.run([*drop[:6], "-D", *drop[7:]], check=True)
    after = traffic(cluster.lab, 200)
    cluster.stop_agents()
    assert observed(entry(cluster.report())) == add(add(before, during), after)


def test_spool_on_a_full_disk_counts_in_aggregate(cluster: Cluster, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "natlens-spool", str(spool)],
                   check=True)
    try:
        cluster.start_collector()
        cluster.start_agents("--spool", str(spool), "--batch-size", "50",
                             "--health-listen", "127.0.0.1:9102")
        cluster.wait_rules()
        cluster.kill9_collector()  # collector away: every batch waits in the spool
        tally = traffic(cluster.lab, 1500)
        wait_for(lambda: "spool full" in (tmp_path / "agent-k8s-node2.log").read_text(), 30)
        metrics = scrape(cluster.lab["nodes"]["k8s-node2"], "http://127.0.0.1:9102/metrics")
        assert metrics["natlens_agent_spool_bytes"] > 0
        assert metrics["natlens_agent_batches_pending"] > 0
        assert metrics["natlens_agent_send_errors_total"] >= 1
        cluster.start_collector()
        cluster.stop_agents()
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=True)
    e = entry(cluster.report())
    assert observed(e) == tally
    lost = {lo["reason"]: lo["count"] for lo in cluster.report()["lost"]}
    assert lost.get("spool-full: counted, not kept per connection", 0) > 0
    log = (tmp_path / "agent-k8s-node2.log").read_text()
    assert "counted in aggregate" in log


def test_collector_disk_full_then_space_freed(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "natlens-db", str(data)],
                   check=True)
    try:
        db = data / "natlens.db"
        cluster.db = db
        cluster.start_collector(db)
        cluster.start_agents()
        cluster.wait_rules()
        filler = data / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k", "count=1000"],
                       capture_output=True)  # fills the rest of the 1 MiB, then fails
        tally = traffic(cluster.lab, 800)
        wait_for(lambda: "cannot write batch" in (tmp_path / "collector.log").read_text(),
                 30)
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(data)], check=True)
        cluster.stop_agents()
        assert observed(entry(cluster.report(db))) == tally
        assert SERVICE in json.dumps(cluster.report(db))
    finally:
        cluster.close()
        subprocess.run(["umount", "-l", str(data)], check=True)


def caps(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1], 16) for line in status
            if line.startswith(("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"))}


def test_agent_keeps_only_what_it_needs_and_still_reads_the_rules(cluster: Cluster) -> None:
    import sqlite3

    cluster.start_collector()
    cluster.start_agents()
    cluster.wait_rules()
    node2 = cluster.agents["k8s-node2"]
    wait_for(lambda: "privileges: kept" in (cluster.tmp / "agent-k8s-node2.log").read_text())
    net_admin = 1 << 12
    for thread in Path(f"/proc/{node2.pid}/task").iterdir():  # every thread, not just one
        c = caps(int(thread.name))
        if c["CapBnd"] != net_admin:  # a thread started before the drop would show here
            raise AssertionError(f"thread {thread.name}: {c}")
    c = caps(node2.pid)
    assert c == {"CapInh": 0, "CapPrm": net_admin, "CapEff": net_admin, "CapBnd": net_admin,
                 "CapAmb": 0}
    # the rules change after the drop: the agent still reads them (iptables-save)
    ns = cluster.lab["nodes"]["k8s-node2"]
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-F",
                    "KUBE-SVC-PK4BNTKC2JYVE7B2"], check=True)

    def second_snapshot() -> bool:
        with sqlite3.connect(cluster.db, timeout=5) as db:
            return db.execute("SELECT COUNT(DISTINCT hash) FROM rule_snapshots WHERE "
                              "node = 'k8s-node2'").fetchone()[0] >= 2
    wait_for(second_snapshot, 20)
    cluster.stop_agents()
