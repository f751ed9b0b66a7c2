"""Agent memory and map-read time with 10,000 service ports × 10 endpoints in the maps.

Loads the eBPF filter (private bpffs), fills the counter map with 100,000 keys by
running the kernel program on ctnetlink messages (BPF_PROG_TEST_RUN), then reads the
maps the way the agent does each interval. Reports the process's resident memory
before and after, the kernel memory of the maps (memlock), and the read time
(median of 5) against a reference: bcc's own per-key iteration of the same map
(`items()`, per-CPU values summed), which the agent used before batching.
Run: .venv/bin/python bench/ebpf_memory.py  (root; needs bcc)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from natlens.agent.sources.ebpf import EbpfFilter  # noqa: E402
from tests.ctmsg import message  # noqa: E402
from tests.privileged.bpf_run import test_run  # noqa: E402

SERVICES, ENDPOINTS = 10_000, 10


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def memlock_mib(fd: int) -> float:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["mount", "-t", "bpf", "bpf", d], check=True)
        try:
            before = rss_mib()
            f = EbpfFilter(f"{d}/node")
            loaded = rss_mib()
            t = time.perf_counter()
            for s in range(SERVICES):
                vip = f"10.{96 + s // 65536}.{s // 256 % 256}.{s % 256}"
                for e in range(ENDPOINTS):
                    ep = f"10.244.{(s * ENDPOINTS + e) // 256 % 256}.{e + 1}"
                    test_run(f.fn.fd, message("new", ("10.244.255.1", vip, 6, 40000, 80),
                                              (ep, "10.244.255.1", 6, 8080, 40000), s))
            fill = time.perf_counter() - t
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
                  f"endpoints); filled in {fill:.1f} s by the kernel program")
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
