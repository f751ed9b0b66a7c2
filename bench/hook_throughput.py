"""Bulk traffic through a Service with the hook attached, against none.

A two-node lab of its own: an iperf3 server in each of two endpoint pods behind a
ClusterIP (kube-proxy's rules, 50 % each, ClientIP affinity so that iperf3's two
connections reach one server), the client on the first node. Each round runs
`iperf3 -c VIP` for SECONDS twice, once with a hook agent running on the client's node
(links attached, records and closes on: the default) and once with none, in a shuffled
order; the ratio of the medians is the figure. Every packet of the stream passes the
hook's netfilter program; only its first one makes a decision.

Run: .venv/bin/python bench/hook_throughput.py   (root; iperf3)
     ROUNDS=7 DURATION=3
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import free_port, natlens_cmd, start_collector

from natlens.agent.sources.ebpf_filter import pin_dir
from natlens.lab import topology
from natlens.lab.scenario import load_scenario

ROUNDS = int(os.environ.get("ROUNDS", "7"))
SECONDS = int(os.environ.get("DURATION", "3"))  # not SECONDS: bash keeps its own
VIP, PORT = "10.96.0.52", 5201
SCENARIO = {
    "name": "hook-throughput", "proxyMode": "iptables",
    "nodes": [
        {"name": "node-a", "podCIDR": "10.244.1.0/24", "pods": [
            {"name": "client", "namespace": "b", "ip": "10.244.1.10",
             "labels": {"app": "client"}},
            {"name": "srv-1", "namespace": "b", "ip": "10.244.1.20",
             "labels": {"app": "srv"}}]},
        {"name": "node-b", "podCIDR": "10.244.2.0/24", "pods": [
            {"name": "srv-2", "namespace": "b", "ip": "10.244.2.20",
             "labels": {"app": "srv"}}]}],
    # ClientIP affinity: iperf3's control and data connections must reach one server.
    "services": [{"name": "srv", "namespace": "b", "clusterIP": VIP,
                  "selector": {"app": "srv"}, "sessionAffinity": "ClientIP",
                  "ports": [{"name": "iperf", "port": PORT, "targetPort": PORT,
                             "protocol": "TCP"}]}],
    "traffic": [],
}


def iperf(client_ns: str) -> float:
    """Bits per second received, one stream for SECONDS."""
    r = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", VIP, "-p",
                        str(PORT), "-t", str(SECONDS), "-J"], capture_output=True,
                       text=True, check=True, timeout=SECONDS + 30)
    return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"])


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab comes down
    tmp = Path(tempfile.mkdtemp(prefix="natlens-iperf-"))
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    st = topology.up(load_scenario(str(path)), str(path))
    servers, bpffs = [], tmp / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    col, port = start_collector(tmp / "natlens.db", tmp / "collector.log")
    nat, env = natlens_cmd()
    got: dict[str, list[float]] = {"none": [], "hook": []}
    try:
        for pod in ("b/srv-1", "b/srv-2"):
            servers.append(subprocess.Popen(["ip", "netns", "exec", st.pods[pod], "iperf3",
                                             "-s", "-p", str(PORT)],
                                            stdout=subprocess.DEVNULL))
        time.sleep(1)
        for r in range(ROUNDS):
            for mode in random.sample(list(got), 2):
                agent = None
                if mode == "hook":
                    log = tmp / "agent.log"
                    agent = subprocess.Popen(
                        [*nat, "agent", "--insecure", "--collector", f"127.0.0.1:{port}",
                         "--node", "node-a", "--netns", st.nodes["node-a"], "--source",
                         "hook", "--pin-root", str(bpffs), "--health-listen",
                         f"127.0.0.1:{free_port()}"], stderr=log.open("w"), env=env)
                    while "source hook:" not in log.read_text():
                        if agent.poll() is not None:
                            raise RuntimeError(log.read_text()[-400:])
                        time.sleep(0.05)
                got[mode].append(iperf(st.pods["b/client"]))
                if agent is not None:
                    agent.terminate()
                    agent.wait(timeout=60)
                    # Detach: the pins go, and with them the links.
                    shutil.rmtree(pin_dir(str(bpffs), "node-a", st.nodes["node-a"]))
                print(f"round {r + 1} {mode}: {got[mode][-1] / 1e9:.2f} Gbit/s", flush=True)
    finally:
        for s in servers:
            s.terminate()
        col.terminate()
        col.wait(timeout=60)
        subprocess.run(["umount", str(bpffs)], check=False)
        topology.down(st)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"\n{ROUNDS} rounds of {SECONDS} s, one TCP stream through the ClusterIP:")
    for k, v in got.items():
        print(f"  {k:5} median {med[k] / 1e9:.2f} Gbit/s "
              f"({min(v) / 1e9:.2f}-{max(v) / 1e9:.2f})")
    print(f"  hook / none: {med['hook'] / med['none']:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
