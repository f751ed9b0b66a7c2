"""Agent memory and map-read time with 10,000 service ports × 10 endpoints in the maps.

Loads the eBPF filter (private bpffs), fills the counter map with 100,000 keys (map
updates, a per-CPU value each, as the kernel program would leave them), then reads
the maps the way the agent does each interval. Reports the process's resident memory
before and after, the kernel memory of the maps (memlock), and the read time
(median of 5) against a reference: bcc's own per-key iteration of the same map
(`items()`, per-CPU values summed), which the agent used before batching.
Run: .venv/bin/python bench/ebpf_memory.py  (root; needs bcc)
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import time

from harness import memlock_mib, rss_mib

from natlens.agent.sources.ebpf_filter import EbpfFilter

SERVICES, ENDPOINTS = 10_000, 10


def fill(f: EbpfFilter) -> None:
    """One counter per (service port, endpoint): struct nl_key of ebpf_filter.c."""
    leaf = f.counters.Leaf
    values = (leaf * f.ncpus)()
    for v in values:
        v.connections = 1
    for s in range(SERVICES):
        vip = socket.inet_aton(f"10.{96 + s // 65536}.{s // 256 % 256}.{s % 256}")
        for e in range(ENDPOINTS):
            ep = socket.inet_aton(f"10.244.{(s * ENDPOINTS + e) // 256 % 256}.{e + 1}")
            key = f.counters.Key(family=socket.AF_INET, proto=6, vip_port=80, ep_port=8080)
            key.vip[:4], key.ep[:4] = list(vip), list(ep)
            f.counters[key] = values


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["mount", "-t", "bpf", "bpf", d], check=True)
        try:
            before = rss_mib()
            f = EbpfFilter(f"{d}/node")
            loaded = rss_mib()
            t = time.perf_counter()
            fill(f)
            filled = time.perf_counter() - t
            reads: list[float] = []
            keys: list[float] = []
            for _ in range(5):
                t = time.perf_counter()
                counters = f.read_counters()
                reads.append(time.perf_counter() - t)
                t = time.perf_counter()
                for _k, per_cpu in f.counters.items():
                    sum(v.connections for v in per_cpu)
                keys.append(time.perf_counter() - t)
            after = rss_mib()
            n = len(counters)
            print(f"keys in the counter map: {n:,} ({SERVICES:,} service ports × {ENDPOINTS} "
                  f"endpoints); filled in {filled:.1f} s by map updates")
            print(f"agent process RSS: {before:.0f} MiB before loading, {loaded:.0f} MiB "
                  f"loaded, {after:.0f} MiB with {n:,} counters read into Python")
            print(f"kernel memory of the maps (memlock): counters "
                  f"{memlock_mib(f.counters.get_fd()):.1f} MiB, seen "
                  f"{memlock_mib(f.seen.get_fd()):.1f} MiB")
            print(f"read_counters (batched): median {statistics.median(reads) * 1e3:.0f} ms; "
                  f"bcc items() {statistics.median(keys) * 1e3:.0f} ms; ratio "
                  f"{statistics.median(reads) / statistics.median(keys):.2f}")
            f.close()
        finally:
            subprocess.run(["umount", d], check=True)


if __name__ == "__main__":
    main()
