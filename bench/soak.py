"""Soak: the seed lab at a steady rate of new connections for a long time, with the
collector killed (kill -9) and restarted in the middle. Zero loss means the report's
per-endpoint totals equal the client tally; memory should stay flat: the agents' and the
collector's RSS is sampled ``SAMPLES`` times over the run (every minute at most) and
``rss_slope_mb_per_min`` is each process's Theil-Sen slope over the samples after the
first quarter of the run (warm-up), either side of the collector's outage: a leak of a
few MB a minute shows however long the run.

The collector runs in the lab's underlay namespace and each agent inside its node's
namespace (as in tests/privileged/test_faults.py), so nothing touches the root
namespace. Run as root:
  DURATION=1800 RATE=1000 .venv/bin/python bench/soak.py      # the 30-minute soak
  DURATION=120 .venv/bin/python bench/soak.py                  # what CI runs
Env: SOURCE (netlink|auto, default netlink: every connection shipped as a decision),
SAMPLES (RSS samples over the run, default 60).
Prints one JSON object; exits 1 when a count differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from itertools import combinations
from pathlib import Path
from statistics import median
from typing import Any

from harness import SEED, rss_mib

from natlens import netns
from natlens.lab import topology
from natlens.lab.scenario import load_scenario
from natlens.lab.traffic import connect_once
from natlens.proto.names import endpoint_key

NATLENS = [sys.executable, "-m", "natlens"]
COLLECTOR = "172.31.255.254:7070"


class Soak:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.sc = load_scenario(SEED)
        self.st = topology.up(self.sc, str(SEED))
        self.underlay = f"{self.st.prefix}-underlay"
        subprocess.run(["ip", "-n", self.underlay, "addr", "add", "172.31.255.254/24", "dev",
                        "ul0"], check=True)
        self.db = work / "soak.db"
        self.procs: list[subprocess.Popen[str]] = []
        self.collector: subprocess.Popen[str] | None = None
        self.agents: dict[str, subprocess.Popen[str]] = {}

    def spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *NATLENS, *argv],
                             stdout=subprocess.PIPE, stderr=(self.work / log).open("a"),
                             text=True, start_new_session=True)
        self.procs.append(p)
        return p

    def start_collector(self) -> None:
        self.collector = self.spawn(self.underlay, [
            "collector", "--insecure", "--db", str(self.db), "--listen", COLLECTOR],
            "collector.log")
        assert self.collector.stdout is not None
        if not self.collector.stdout.readline().startswith("listening"):
            raise RuntimeError((self.work / "collector.log").read_text()[-500:])

    def start_agents(self, source: str) -> None:
        for node, ns in self.st.nodes.items():
            self.agents[node] = self.spawn(ns, [
                "agent", "--insecure", "--collector", COLLECTOR, "--node", node, "--source",
                source, "--spool", str(self.work / f"spool-{node}"), "--drain-timeout", "300",
                "--pin-root", str(self.work / "bpf")], f"agent-{node}.log")

    def traffic(self, rate: float, duration: float, tally: Counter[str],
                failed: list[int]) -> None:
        """Paced connections from the client pod: one every 1/rate seconds."""
        client = self.sc.pods[0]
        svc, port = self.sc.service_port("istio-demo/bill-service:http")
        bodies = {p.serve.body.encode(): endpoint_key(p.ip, p.serve.port)
                  for p in self.sc.pods if p.serve is not None}
        with netns.entered(self.st.pods[f"{client.namespace}/{client.name}"]):
            start = time.monotonic()
            k = 0
            while (now := time.monotonic()) - start < duration:
                due = start + k / rate
                if due > now:
                    time.sleep(due - now)
                k += 1
                try:
                    ep = bodies.get(connect_once(svc.cluster_ip, port.port, "TCP", 3.0, 0))
                except OSError:
                    ep = None
                if ep is None:
                    failed[0] += 1
                else:
                    tally[ep] += 1

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        topology.down(self.st)
        subprocess.run(["umount", str(self.work / "bpf")], capture_output=True)


def slopes(rss: list[dict[str, Any]], warmup: float, outage: tuple[float, float],
           ) -> dict[str, float]:
    """MB a minute, per process: the median of the slopes between every two samples taken
    after ``warmup`` seconds on the same side of the collector's ``outage`` (Theil-Sen,
    one intercept per side): the outage's one step in the agents' memory (batches held
    while the collector is down) is not a trend, a leak of a few MB a minute is."""
    sides = ([r for r in rss if warmup <= r["t"] < outage[0]],
             [r for r in rss if r["t"] >= max(warmup, outage[1])])
    out = {}
    for key in (k for k in rss[0] if k.endswith("_mb")):
        pairs = [(b[key] - a[key]) / ((b["t"] - a["t"]) / 60) for side in sides
                 for a, b in combinations(side, 2) if b["t"] > a["t"]]
        if pairs:
            out[key.removesuffix("_mb")] = round(float(median(pairs)), 3)
    return out


def main() -> int:
    duration = float(os.environ.get("DURATION", 1800))
    every = min(60.0, duration / float(os.environ.get("SAMPLES", 60)))
    rate = float(os.environ.get("RATE", 1000))
    source = os.environ.get("SOURCE", "netlink")
    with tempfile.TemporaryDirectory(prefix="natlens-soak-") as d:
        work = Path(d)
        (work / "bpf").mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(work / "bpf")], check=True)
        soak = Soak(work)
        try:
            soak.start_collector()
            soak.start_agents(source)
            time.sleep(3)
            tally: Counter[str] = Counter()
            failed = [0]
            t = threading.Thread(target=soak.traffic, args=(rate, duration, tally, failed))
            t0 = time.monotonic()
            t.start()
            rss: list[dict[str, Any]] = []
            outage = (duration, duration)
            while t.is_alive():
                t.join(timeout=every - (time.monotonic() - t0) % every)
                elapsed = time.monotonic() - t0
                assert soak.collector is not None
                rss.append({"t": round(elapsed), "connections": sum(tally.values()),
                            "collector_mb": rss_mib(soak.collector.pid),
                            **{f"agent_{n}_mb": rss_mib(p.pid)
                               for n, p in soak.agents.items()}})
                if outage[0] == duration and elapsed >= duration / 2:
                    os.killpg(soak.collector.pid, signal.SIGKILL)
                    soak.collector.wait(timeout=10)
                    time.sleep(5)
                    soak.start_collector()
                    # the agents' memory settles once they have resent what they held
                    outage = (elapsed, time.monotonic() - t0 + 15)
            achieved = sum(tally.values()) / (time.monotonic() - t0)
            for p in soak.agents.values():
                os.killpg(p.pid, signal.SIGTERM)
            for p in soak.agents.values():
                p.wait(timeout=400)
            out = subprocess.run([*NATLENS, "report", "--db", str(soak.db), "-o", "json"],
                                 capture_output=True, text=True, check=True).stdout
            report = json.loads(out)
            observed: Counter[str] = Counter()
            for s in report["services"]:
                if s["node"] == "k8s-node2":
                    for e in s["endpoints"] + s["undeclared"]:
                        observed[e["endpoint"]] += e["observed"]
            result = {"duration_s": duration, "rate_asked": rate,
                      "rate_achieved": round(achieved, 1), "source": source,
                      "client_tally": dict(tally), "client_failed": failed[0],
                      "observed": dict(observed), "exact": observed == tally,
                      "lost": report["lost"], "rss_every_interval": rss,
                      "outage_s": [round(t) for t in outage],
                      "rss_slope_mb_per_min": slopes(rss, duration / 4, outage)}
            print(json.dumps(result, indent=1))
            return 0 if observed == tally and not failed[0] else 1
        finally:
            soak.close()


if __name__ == "__main__":
    sys.exit(main())
