"""ebpf_filter.c, loaded through bcc as a socket filter for the conntrack socket, and
its pinned maps (the eBPF source's kernel side; the loop is in ebpf.py).

The kernel runs the filter on every conntrack event before it is queued, so events
that are not DNAT decisions cost no copy and no wake-up, and in aggregate mode none
does: the counts live in per-CPU maps pinned under bpffs, read here every interval.
Pinned maps outlive the agent, so a restarted agent (kill -9 included) carries on
from the same cumulative counters; the collector counts the change since the last
total it stored for the same epoch, so nothing is counted twice or missed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from natlens.agent.decode import decision
from natlens.agent.decode.counters import CounterKey, CounterValue
from natlens.agent.decode.ctnetlink import address
from natlens.agent.sources import bpf_counters
from natlens.agent.sources.seen import seen_before
from natlens.errors import NatlensError
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow

PROGRAM = Path(__file__).with_name("ebpf_filter.c")
# Names of the stats array's slots, in the order of the enum in ebpf_filter.c.
STATS = ("events", "new", "destroy", "non_dnat", "map_full", "sampled_out", "passed",
         "malformed", "ring_full")
# (reason shipped in LostEvents, slot of the stats array)
LOSSES = (("map-full", "map_full"), ("sampling", "sampled_out"), ("malformed", "malformed"),
          ("ring-overflow", "ring_full"))
SO_ATTACH_BPF = 50
BPF_FS_MAGIC = 0xCAFE4A11
# Where scripts/install.sh merges Debian's header packages for bcc.
DEFAULT_HEADERS = "/var/lib/natlens/kernel-headers"
DEFAULT_MAX_KEYS = 1 << 18
DEFAULT_MAX_SEEN = 1 << 20
CLOCK_SLACK_NS = 1_000_000


# struct decision_rec: boot_ns, kind, family, then struct parsed (two struct tuples of
# src[16] dst[16] sport dport proto — ports in network order —, counters, timestamps,
# ct_id, zone), with the C compiler's padding written out.
_TUPLE = "16s16sHHBx"
RECORD = struct.Struct("=QBB6x" + _TUPLE + _TUPLE + "4x6QIH2x")
RING_PAGES = 4096  # 16 MiB: about 110,000 records before the ring is full
# The filter wakes the agent once per this many records per CPU (and the agent drains
# the ring every poll anyway): 256 x 128 CPUs is under a third of the ring.
WAKE_EVERY = 256


def decode_record(data: bytes, offset_ns: int) -> DecisionRow:
    """A ring-buffer record (struct decision_rec) straight to a decision row, with no
    ``CtEvent`` on the way; ``offset_ns`` turns the boot clock into wall-clock time
    (``boot_offset_ns``)."""
    (boot, kind, family, osrc, odst, osport, odport, proto, rsrc, _, rsport, _, _,
     opk, oby, rpk, rby, start, stop, ct_id, zone) = RECORD.unpack_from(data)
    n = 16 if family == socket.AF_INET6 else 4
    ntohs = socket.ntohs
    return decision.row(proto, address(osrc[:n]), ntohs(osport), address(odst[:n]),
                        ntohs(odport), address(rsrc[:n]), ntohs(rsport), ct_id, zone,
                        pb.SOURCE_EBPF, pb.EVENT_DESTROY if kind else pb.EVENT_NEW, start,
                        stop, boot + offset_ns, opk, oby, rpk, rby)


class BpfUnavailable(NatlensError):
    """The program could not be compiled, loaded or attached; the message says why."""


def pin_dir(root: str, node: str, netns: str | None = None) -> str:
    """One directory of pinned maps per node, and per namespace when the agent watches
    one other than its own (labs reuse node names): ``NODE`` or ``NODE@NETNS``."""
    name = node if not netns else f"{node}@{os.path.basename(netns)}"
    return os.path.join(root, re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:240] or "node")


def remove_pins(root: str, netns: str) -> list[str]:
    """Delete the pinned maps of agents that watched ``netns`` (``lab down``)."""
    removed: list[str] = []
    base = Path(root)
    if not base.is_dir():
        return removed
    for d in base.glob(f"*@{os.path.basename(netns)}"):
        for f in sorted(d.rglob("*"), reverse=True):  # pins first, then their folders
            f.rmdir() if f.is_dir() else f.unlink()
        d.rmdir()
        removed.append(str(d))
    return removed


def with_includes(path: Path) -> str:
    """A C file with its local ``#include "…"`` lines replaced by the files: what bcc
    compiles, and what --print-bpf shows, in one piece."""
    out = []
    for line in path.read_text().splitlines(keepends=True):
        m = re.match(r'#include "([^"]+)"', line)
        out.append(with_includes(path.with_name(m.group(1))) if m else line)
    return "".join(out)


def program_text(pin: str) -> str:
    return with_includes(PROGRAM).replace("__PIN__", pin)


def is_bpffs(path: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)

    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    buf = StatFs()
    if libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return bool((buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC)


def ensure_bpffs(pin: str) -> str | None:
    """bpffs must hold the pins. Only /sys/fs/bpf, its usual home, is mounted here if
    nobody has (returns it then); any other folder must already be on a bpffs, so that
    nothing is ever mounted over a user's files."""
    mnt = Path(pin)
    while not mnt.exists():
        mnt = mnt.parent
    if not is_bpffs(str(mnt)):
        if not (pin.startswith("/sys/fs/bpf/") and str(mnt) in ("/sys/fs/bpf", "/sys/fs")):
            raise BpfUnavailable(f"{mnt} is not on a bpffs; mount one there "
                                 f"(mount -t bpf bpf DIR) or use a --pin-root under "
                                 f"/sys/fs/bpf")
        r = subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], capture_output=True,
                           text=True)
        if r.returncode != 0 or not is_bpffs("/sys/fs/bpf"):
            raise BpfUnavailable(f"/sys/fs/bpf is not a bpffs and mounting one failed: "
                                 f"{r.stderr.strip()}")
        os.makedirs(pin, exist_ok=True)
        return "/sys/fs/bpf"
    os.makedirs(pin, exist_ok=True)
    return None


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Collect what bcc and its compiler write to fds 1 and 2 (bypassing sys.stdout and
    sys.stderr), so that a failure becomes one line with its reason, not a page of
    clang output, and a success prints nothing."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+") as tmp:
        for fd in (1, 2):
            os.dup2(tmp.fileno(), fd)
        try:
            yield lines
        finally:
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            lines.extend(x.strip() for x in tmp.read().splitlines() if x.strip())


def compile_reason(stderr: list[str], exc: BaseException) -> str:
    """The line of compiler output that says why, else the exception's first line."""
    for needle in ("Unable to find kernel headers", "error:", "bpf: "):
        for line in stderr:
            if needle in line:
                return line.split(". ", 1)[0]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def boot_offset_ns() -> int:
    """Add to a CLOCK_BOOTTIME reading (bpf_ktime_get_boot_ns) to get wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class EbpfFilter:
    """The loaded program and its maps, for one node's pin directory."""

    def __init__(self, pin: str, decisions: bool = False, sample: int = 1,
                 max_keys: int = DEFAULT_MAX_KEYS, max_seen: int = DEFAULT_MAX_SEEN,
                 ring_pages: int = RING_PAGES) -> None:
        """``ring_pages``: the decisions ring's size, a power of two (tests make it
        small to wrap it around and fill it)."""
        if sample < 1:
            raise ValueError("sample rate must be at least 1")
        self.pin = pin
        self.sample = sample
        try:
            from bcc import BPF  # optional: only this source needs bcc
        except ImportError as e:
            raise BpfUnavailable(f"bcc is not importable ({e}); install python3-bpfcc") from e
        if "BCC_KERNEL_SOURCE" not in os.environ and Path(DEFAULT_HEADERS).is_dir():
            os.environ["BCC_KERNEL_SOURCE"] = DEFAULT_HEADERS
        self.mounted = ensure_bpffs(pin)
        self.fresh = not Path(pin, "counters").exists()
        try:
            with captured_output() as err:
                self.bpf = BPF(text=program_text(pin).encode(),
                               cflags=[f"-DMAX_KEYS={max_keys}", f"-DMAX_SEEN={max_seen}",
                                       f"-DRING_PAGES={ring_pages}",
                                       f"-DWAKE_EVERY={WAKE_EVERY}", "-Wno-unused-value"])
                self.fn = self.bpf.load_func(b"ct_filter", BPF.SOCKET_FILTER)
        except Exception as e:  # bcc raises bare Exception; the reason is on fd 2
            raise BpfUnavailable(f"eBPF program did not load: {compile_reason(err, e)}") from e
        self.counters = self.bpf[b"counters"]
        from bcc.utils import get_possible_cpus

        self.ncpus = len(get_possible_cpus())
        self._keys: dict[bytes, CounterKey] = {}
        self.seen = self.bpf[b"seen"]
        self.stats_map = self.bpf[b"stats"]
        meta = self.bpf[b"meta"]
        if self.fresh or meta[ctypes.c_uint32(0)].value == 0:
            self.fresh = True
            meta[ctypes.c_uint32(0)] = ctypes.c_uint64(secrets.randbits(63) | 1)
        self.epoch = f"{meta[ctypes.c_uint32(0)].value:016x}"
        self._ring = False
        self._offset = boot_offset_ns()
        self.configure(decisions, sample)

    def configure(self, decisions: bool, sample: int = 1, seed: int | None = None) -> None:
        """Set the mode in the running program (a map write, no reload)."""
        cfg = self.bpf[b"config"]
        leaf = cfg.Leaf()
        leaf.decisions, leaf.sample = int(decisions), sample
        leaf.seed = secrets.randbits(32) if seed is None else seed
        cfg[ctypes.c_uint32(0)] = leaf
        self.sample = sample

    def open_decisions(self, handle: Callable[[DecisionRow], None]) -> None:
        """Decision mode: ``handle(row)`` for each record ``poll`` consumes."""
        string_at = ctypes.string_at

        def on_record(_ctx: Any, data: int, size: int) -> int:
            handle(decode_record(string_at(data, size), self._offset))
            return 0

        self.bpf[b"decisions"].open_ring_buffer(on_record)
        self._ring = True

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, or until the filter wakes us (every
        WAKE_EVERY records on a CPU), then hand over every record in the ring."""
        if self._ring:
            self._offset = boot_offset_ns()  # the wall clock may have been stepped
            self.bpf.ring_buffer_poll(int(timeout * 1000))
            self.bpf.ring_buffer_consume()  # what came without a wake-up

    def attach(self, sock: socket.socket) -> None:
        """Before bind(): no event may reach the socket unfiltered."""
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, self.fn.fd)

    def read_counters(self) -> dict[CounterKey, CounterValue]:
        """Every counter, per-CPU slots summed (bpf_counters.read_counters)."""
        from bcc.libbcc import lib  # optional dependency, as in __init__

        return bpf_counters.read_counters(lib.bpf_lookup_batch, self.counters.map_fd,
                                          self.ncpus, self._keys)

    def read_losses(self) -> dict[str, int]:
        """Running totals of what the filter counted but could not keep, by the reason
        the report gives."""
        stats = self.read_stats()
        return {reason: stats[slot] for reason, slot in LOSSES}

    def read_stats(self) -> dict[str, int]:
        return {name: int(sum(self.stats_map[ctypes.c_uint32(i)]))
                for i, name in enumerate(STATS)}

    def seen_checker(self) -> Callable[[int, int, int], bool]:
        """known(zone, ct_id, start_ns) against the pinned seen map (``seen_before``)."""
        offset = boot_offset_ns()
        seen = self.seen

        def known(zone: int, ct_id: int, start_ns: int) -> bool:
            try:
                at = seen[seen.Key(ct_id=ct_id, zone=zone)].value
            except KeyError:
                return False
            # The boot clock is converted to wall-clock time here and when marking;
            # a millisecond of slack absorbs the conversion's jitter.
            return seen_before(at + offset + CLOCK_SLACK_NS if at else 0, start_ns)

        return known

    def mark_seen(self, zone: int, ct_id: int, start_ns: int) -> None:
        """Record an entry met in a dump (boot-clock ns of its start, 0 if unknown)."""
        at = max(start_ns - boot_offset_ns(), 1) if start_ns else 0
        self.seen[self.seen.Key(ct_id=ct_id, zone=zone)] = ctypes.c_uint64(at)

    def close(self) -> None:
        self.bpf.cleanup()
