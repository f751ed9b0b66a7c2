"""The eBPF filter's own run time per event, from the kernel's BPF run-time statistics.

bench/event_cost.py samples the filter with perf; on this VM a timer sample that falls
while interrupts are off (a map's bucket lock) lands where they come back on, so a
sampled split inside the filter is only roughly right. The kernel can instead time
every program run itself (BPF_ENABLE_STATS: run_time_ns and run_cnt per program, kept
only while the returned descriptor is open). In the seed lab, the same unanswered SYN
flood as source_cpu.py under the natlens agent in aggregate mode, of this tree and, with
BEFORE=<commit>, of that commit, interleaved over RUNS rounds: nanoseconds per run of
the ``ct_filter`` program (every NEW event of the flood runs it once), medians.
Run: .venv/bin/python bench/filter_runtime.py   (root; BEFORE=<commit> RUNS=5 RATE=30000)
"""

from __future__ import annotations

import ctypes
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import harness as h  # bench/harness.py, beside this script

from natlens.lab import topology
from natlens.lab.scenario import load_scenario

BEFORE = os.environ.get("BEFORE", "")
RUNS = int(os.environ.get("RUNS", "5"))
ARGS = ["--source", "ebpf", "--no-ct-accounting"]

SYS_BPF = 321  # x86_64
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
BPF_ENABLE_STATS, BPF_STATS_RUN_TIME = 32, 0
INFO_NAME, INFO_RUN_TIME_NS, INFO_RUN_CNT = 64, 192, 200  # offsets in struct bpf_prog_info
_libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    r = int(_libc.syscall(SYS_BPF, cmd, attr, len(attr)))
    if r < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd}): {os.strerror(ctypes.get_errno())}")
    return r


def enable_stats() -> int:
    """A descriptor; the kernel times every BPF program run while it is open."""
    attr = ctypes.create_string_buffer(8)
    ctypes.c_uint32.from_buffer(attr).value = BPF_STATS_RUN_TIME
    return bpf(BPF_ENABLE_STATS, attr)


def filter_runs() -> tuple[int, int]:
    """Summed run_time_ns and run_cnt of every loaded program named ct_filter."""
    total_ns = total_cnt = 0
    prog_id = 0
    while True:
        attr = ctypes.create_string_buffer(16)
        ctypes.c_uint32.from_buffer(attr).value = prog_id
        try:
            bpf(BPF_PROG_GET_NEXT_ID, attr)
        except OSError:
            return total_ns, total_cnt  # ENOENT: no more programs
        prog_id = ctypes.c_uint32.from_buffer(attr, 4).value
        attr = ctypes.create_string_buffer(16)
        ctypes.c_uint32.from_buffer(attr).value = prog_id
        try:
            fd = bpf(BPF_PROG_GET_FD_BY_ID, attr)
        except OSError:
            continue  # unloaded since
        try:
            info = ctypes.create_string_buffer(256)
            attr = ctypes.create_string_buffer(16)
            ctypes.c_uint32.from_buffer(attr).value = fd
            ctypes.c_uint32.from_buffer(attr, 4).value = len(info)
            ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
            bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        finally:
            os.close(fd)
        if info.raw[INFO_NAME:INFO_NAME + 16].split(b"\0")[0] == b"ct_filter":
            total_ns += ctypes.c_uint64.from_buffer(info, INFO_RUN_TIME_NS).value
            total_cnt += ctypes.c_uint64.from_buffer(info, INFO_RUN_CNT).value


def one(pod: str, node: str, tmp: Path, packets: Path, name: str,
        tree: Path | None) -> tuple[float, int]:
    """Nanoseconds per filter run over one flood, and the runs."""
    h.clear(node)
    nl = h.Natlens(node, tmp, name, ARGS, tree)
    try:
        nl.watching()
        fl = h.Flooder(pod, packets)
        stats = enable_stats()
        try:
            ns0, n0 = filter_runs()
            fl.run()
            ns1, n1 = filter_runs()
        finally:
            os.close(stats)
    finally:
        nl.stop()
    return (ns1 - ns0) / max(n1 - n0, 1), n1 - n0


def main() -> None:
    st = topology.up(load_scenario(h.SEED), str(h.SEED))
    pod, node = st.pods[h.CLIENT], st.nodes["k8s-node2"]
    names = ["this tree"] + ([f"@{BEFORE}"] if BEFORE else [])
    got: dict[str, list[float]] = {n: [] for n in names}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            trees: dict[str, Path | None] = {"this tree": None}
            if BEFORE:
                trees[f"@{BEFORE}"] = h.tree_at(BEFORE, tmp)
            h.silence_endpoints(st)
            packets = h.build_flood(pod, tmp)
            for i in range(RUNS):
                for name in names if i % 2 == 0 else names[::-1]:  # neither always first
                    per, runs = one(pod, node, tmp, packets, name, trees[name])
                    got[name].append(per)
                    print(f"run {i} {name}: {per:.0f} ns per filter run ({runs} runs)",
                          flush=True)
    finally:
        topology.down(st)
    print(f"flood {h.FLOOD} SYNs at {h.RATE or 'max'}/s, {RUNS} rounds, medians of the "
          "kernel's own timing:")
    for name in names:
        print(f"  {name}: {statistics.median(got[name]):.0f} ns per filter run "
              f"({min(got[name]):.0f}-{max(got[name]):.0f})")
    if BEFORE:
        ratios = [a / b for a, b in zip(got["this tree"], got[f"@{BEFORE}"], strict=True)]
        print(f"  this tree / @{BEFORE}, paired per round: {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
