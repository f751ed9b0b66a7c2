"""The eBPF source end to end: hping3 floods in the seed lab, counted by the kernel
program, checked exactly against a `conntrack -E` run watching the same flood."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from .helpers import (
    CLIENT,
    NATLENS,
    free_port,
    log_until_subscribed,
    report_of,
    start,
    traffic,
    wait_for,
)

pytestmark = pytest.mark.privileged
VIP, PORT = "10.1.122.241", 9999
NODE = "k8s-node2"
FLOOD = 100_000
_EVENT = re.compile(r"dst=" + re.escape(VIP) + r" sport=\d+ dport=" + str(PORT)
                    + r" .*?src=(\S+) dst=\S+ sport=(\d+)")


@contextmanager
def conntrack_reference(lab: dict[str, Any], out: Path) -> Iterator[Counter[str]]:
    """`conntrack -E` in the node's namespace: NEW events to the VIP, per endpoint."""
    counts: Counter[str] = Counter()
    # The reference must not lose events itself: a big buffer, and ahead of the agent,
    # the collector and hping3 for the two cores (nice -10).
    p = subprocess.Popen(["nice", "-n", "-10", "ip", "netns", "exec", lab["nodes"][NODE],
                          "conntrack", "-E", "-e", "NEW", "-d", VIP, "-b", str(512 << 20)],
                         stdout=out.open("w"), stderr=subprocess.PIPE, text=True)
    try:
        # conntrack prints this once its socket is set up: subscribed before the flood.
        assert p.stderr and select.select([p.stderr], [], [], 10)[0]
        assert "buffer size" in p.stderr.readline()
        yield counts
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert "ENOBUFS" not in err, err  # the reference itself must not have lost events
    for line in out.read_text().splitlines():
        m = _EVENT.search(line)
        if m:
            counts[f"{m.group(1)}:{m.group(2)}"] += 1


def flood(lab: dict[str, Any], n: int) -> None:
    """n SYNs from the client pod, as fast as hping3 sends; each one a new connection."""
    r = subprocess.run(["ip", "netns", "exec", lab["pods"][f"istio-demo/{CLIENT}"], "hping3",
                        "-S", "-p", str(PORT), "-i", "u1", "-c", str(n), "-q", VIP],
                       capture_output=True, text=True, timeout=300)
    # hping3 exits 1 when no reply reached it (the client answers SYN-ACKs with RST).
    assert f"{n} packets transmitted" in r.stdout + r.stderr, r.stdout + r.stderr


class Run:
    """A collector and an eBPF agent on the seed lab's node2, pins in a private bpffs."""

    def __init__(self, lab: dict[str, Any], tmp: Path, bpffs: Path) -> None:
        self.lab, self.tmp, self.bpffs = lab, tmp, bpffs
        self.db = tmp / "natlens.db"
        self.port = free_port()
        self.collector = start(["collector", "--insecure", "--db", str(self.db), "--listen",
                                f"127.0.0.1:{self.port}"], tmp / "collector.log")
        assert self.collector.stdout and self.collector.stdout.readline().startswith("listen")
        self.agent: subprocess.Popen[str] | None = None
        self.starts = 0

    def start_agent(self, *args: str) -> None:
        self.starts += 1
        log = self.tmp / f"agent{self.starts}.log"
        self.agent = start(["agent", "--insecure",
                            "--collector", f"127.0.0.1:{self.port}", "--node", NODE,
                            "--netns", self.lab["nodes"][NODE], "--source", "ebpf",
                            "--pin-root", str(self.bpffs), "--counters-interval", "0.2",
                            *args], log)
        wait_for(lambda: "subscribed" in log.read_text(), 60)

    def stop_agent(self) -> str:
        assert self.agent is not None
        self.agent.terminate()
        rc = self.agent.wait(timeout=120)
        text = (self.tmp / f"agent{self.starts}.log").read_text()
        assert rc == 0, text
        return text

    def report(self) -> dict[str, Any]:
        self.collector.terminate()
        self.collector.wait(timeout=60)
        return report_of(self.db)

    def close(self) -> None:
        for p in (self.agent, self.collector):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def run(lab: dict[str, Any], tmp_path: Path, bpffs: Path) -> Iterator[Run]:
    r = Run(lab, tmp_path, bpffs)
    try:
        yield r
    finally:
        r.close()


def observed(rep: dict[str, Any]) -> dict[str, int]:
    (entry,) = rep["services"]
    return {e["endpoint"]: e["observed"] for e in entry["endpoints"]}


def test_aggregate_mode_is_exact_at_flood_rate(run: Run) -> None:
    run.start_agent("--aggregate-only")
    with conntrack_reference(run.lab, run.tmp / "ct.txt") as ref:
        flood(run.lab, FLOOD)
    log = run.stop_agent()
    rep = run.report()
    assert sum(ref.values()) >= FLOOD
    assert observed(rep) == dict(ref)
    assert rep["lost"] == []
    assert "bpf_passed=0" in log  # aggregate mode: not one event copied to user space


def test_decision_mode_is_exact_and_every_decision_is_stored_or_counted_lost(
        run: Run) -> None:
    run.start_agent()  # a record per connection: the default
    with conntrack_reference(run.lab, run.tmp / "ct.txt") as ref:
        flood(run.lab, FLOOD)
    run.stop_agent()
    rep = run.report()
    assert observed(rep) == dict(ref)
    db = sqlite_utils.Database(run.db)
    stored = db.execute("SELECT COUNT(*) FROM decisions WHERE source='ebpf' AND event='new' "
                        "AND vip=?", [VIP]).fetchone()[0]
    lost = sum(x["count"] for x in rep["lost"] if x["reason"] in ("enobufs", "ring-overflow"))
    assert stored + lost == sum(ref.values())


def test_kill_9_and_restart_counts_every_connection_once(run: Run) -> None:
    with conntrack_reference(run.lab, run.tmp / "ct.txt") as ref:
        run.start_agent("--aggregate-only")
        flood(run.lab, 30_000)
        assert run.agent is not None
        os.kill(run.agent.pid, signal.SIGKILL)
        run.agent.wait()
        down = traffic(run.lab, 200)  # made while no agent runs; still in the table
        run.start_agent("--aggregate-only")
        flood(run.lab, 30_000)
    log = run.stop_agent()
    assert "recovered 200 DNAT decisions" in (run.tmp / "agent2.log").read_text(), log
    rep = run.report()
    assert observed(rep) == dict(ref)
    assert sum(down.values()) == 200


def test_sampled_decisions_scale_back_within_the_stated_error(run: Run) -> None:
    rate = 10
    run.start_agent("--sample", str(rate))
    with conntrack_reference(run.lab, run.tmp / "ct.txt") as ref:
        flood(run.lab, 50_000)
    run.stop_agent()
    rep = run.report()
    (entry,) = rep["services"]
    assert observed(rep) == dict(ref)  # the counters stay exact
    assert entry["sampled"]["rate"] == rate
    for e in entry["sampled"]["endpoints"]:
        assert abs(e["scaled"] - ref[e["endpoint"]]) <= e["error"], e
    (sampling,) = [x for x in rep["lost"] if x["reason"] == "sampling"]
    kept = sum(e["decisions"] for e in entry["sampled"]["endpoints"])
    assert sampling["count"] + kept == sum(ref.values())


def test_auto_falls_back_to_netlink_and_ebpf_fails_with_the_reason(
        lab: dict[str, Any], tmp_path: Path, bpffs: Path) -> None:
    empty = tmp_path / "no-headers"
    empty.mkdir()
    env = {**os.environ, "BCC_KERNEL_SOURCE": str(empty),
           "NATLENS_BPF_OBJECT": str(tmp_path / "missing.bpf.o")}
    port = free_port()
    base = [*NATLENS, "agent", "--insecure",
            "--collector", f"127.0.0.1:{port}", "--node", NODE, "--netns", lab["nodes"][NODE],
            "--pin-root", str(bpffs)]
    r = subprocess.run([*base, "--source", "ebpf"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("natlens: error: agent: --source ebpf: eBPF program did not load: "
                           "Unable to find kernel headers"), line
    text = log_until_subscribed([*base, "--source", "auto", "--drain-timeout", "0"],
                                tmp_path / "auto.log", env=env)
    steps = [x for x in text.splitlines() if "source auto:" in x]
    assert len(steps) == 2, text  # one line per step, each with its reason
    assert "hook unavailable, trying ebpf: " in steps[0] and "missing.bpf.o" in steps[0]
    assert "eBPF unavailable, using netlink: " in steps[1]


def test_a_bpffs_mounted_where_it_cannot_outlive_the_agent_is_said(
        lab: dict[str, Any], tmp_path: Path) -> None:
    """Under `ip netns exec` the agent gets a /sys of its own: the bpffs it mounts there,
    and the counters pinned in it, go when it exits, and it says so."""
    text = log_until_subscribed(
        ["ip", "netns", "exec", lab["nodes"][NODE], *NATLENS, "agent", "--insecure",
         "--collector", "127.0.0.1:1", "--node", NODE, "--source", "ebpf", "--drain-timeout",
         "0"], tmp_path / "agent.log", 90)
    assert " INFO bpffs: mounted at /sys/fs/bpf for the pinned maps" in text, text
    (warning,) = [x for x in text.splitlines() if "own mount namespace" in x]
    assert " WARNING bpffs: /sys/fs/bpf was mounted" in warning
