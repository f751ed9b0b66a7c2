"""What the hook's netfilter program costs per packet, from the kernel's own BPF stats.

BPF_ENABLE_STATS (held as an fd by this script, so the setting goes with it) makes the
kernel time every run of every BPF program; `bpftool prog show` then gives each
program's run count and total run time. In the lab of bench/hook_throughput.py the
hook agent runs (its defaults), and two loads pass it: one TCP stream for SECONDS
(iperf3: nearly every packet is not a connection's first, the path that leaves after
one load and a compare) and a flood of FLOOD SYNs (each one a decision: counted and
recorded). Per packet = run time / runs over each load alone.

Run: .venv/bin/python bench/hook_packet_cost.py   (root; iperf3, bpftool)
     DURATION=5 FLOOD=30000 RATE=20000 ARGS=""
     (RATE paces the flood, SYNs per second; ARGS are the agent's, e.g. --aggregate-only)
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import free_port, natlens_cmd, start_collector
from hook_throughput import PORT, SCENARIO, VIP

from natlens.agent.sources.ebpf_filter import pin_dir
from natlens.lab import topology
from natlens.lab.scenario import load_scenario

SECONDS = int(os.environ.get("DURATION", "5"))  # not SECONDS: bash keeps its own
FLOOD = int(os.environ.get("FLOOD", "30000"))
RATE = int(os.environ.get("RATE", "20000"))
ARGS = os.environ.get("ARGS", "").split()
SYNFLOOD = Path(__file__).with_name("synflood.py")
BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, SYS_BPF = 32, 0, 321


def enable_stats() -> int:
    """An fd that keeps the kernel timing BPF programs until it is closed."""
    attr = ctypes.create_string_buffer(8)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, 8)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return int(fd)


def hook_stats() -> tuple[int, int]:
    """(runs, run time ns) summed over every loaded natlens_hook program."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True, text=True).stdout)
    mine = [p for p in progs if p.get("name") == "natlens_hook"]
    return (sum(p.get("run_cnt", 0) for p in mine), sum(p.get("run_time_ns", 0) for p in mine))


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="natlens-pkt-"))
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    st = topology.up(load_scenario(str(path)), str(path))
    bpffs = tmp / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    col, port = start_collector(tmp / "natlens.db", tmp / "collector.log")
    nat, env = natlens_cmd()
    stats = enable_stats()
    servers, agent = [], None
    try:
        for pod in ("b/srv-1", "b/srv-2"):
            servers.append(subprocess.Popen(["ip", "netns", "exec", st.pods[pod], "iperf3",
                                             "-s", "-p", str(PORT)],
                                            stdout=subprocess.DEVNULL))
        log = tmp / "agent.log"
        agent = subprocess.Popen([*nat, "agent", "--insecure", "--collector",
                                  f"127.0.0.1:{port}", "--node", "node-a", "--netns",
                                  st.nodes["node-a"], "--pin-root", str(bpffs),
                                  "--health-listen", f"127.0.0.1:{free_port()}", *ARGS],
                                 stderr=log.open("w"), env=env)
        while "source hook:" not in log.read_text():
            if agent.poll() is not None:
                raise RuntimeError(log.read_text()[-400:])
            time.sleep(0.05)
        time.sleep(1)
        client = st.pods["b/client"]
        r0 = hook_stats()
        out = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", VIP, "-p",
                              str(PORT), "-t", str(SECONDS), "-J"], capture_output=True,
                             text=True, check=True, timeout=SECONDS + 30).stdout
        r1 = hook_stats()
        packets = tmp / "syn.bin"
        subprocess.run([sys.executable, str(SYNFLOOD), "build", str(packets), "10.244.1.10",
                        VIP, str(PORT), str(FLOOD)], check=True)
        subprocess.run(["ip", "netns", "exec", client, sys.executable, str(SYNFLOOD), "send",
                        str(packets), VIP, str(RATE)], input="go\n", capture_output=True,
                       text=True, check=True, timeout=300)
        time.sleep(1)
        r2 = hook_stats()
    finally:
        os.close(stats)
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        for s in servers:
            s.terminate()
        col.terminate()
        col.wait(timeout=60)
        shutil.rmtree(pin_dir(str(bpffs), "node-a", st.nodes["node-a"]), ignore_errors=True)
        subprocess.run(["umount", str(bpffs)], check=False)
        topology.down(st)
        shutil.rmtree(tmp, ignore_errors=True)
    gbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    bulk_runs, bulk_ns = r1[0] - r0[0], r1[1] - r0[1]
    syn_runs, syn_ns = r2[0] - r1[0], r2[1] - r1[1]
    print(f"bulk stream ({gbit:.2f} Gbit/s for {SECONDS} s): {bulk_runs:,} runs of the hook, "
          f"{bulk_ns / max(bulk_runs, 1):.1f} ns each")
    print(f"SYN flood ({FLOOD:,} new connections at {RATE:,}/s, each SYN-ACK and RST too; "
          f"agent {' '.join(ARGS) or 'defaults'}): {syn_runs:,} "
          f"runs, {syn_ns / max(syn_runs, 1):.1f} ns each, "
          f"{syn_ns / FLOOD:.0f} ns per connection")


if __name__ == "__main__":
    sys.exit(main())
