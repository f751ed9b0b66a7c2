"""hook.bpf.o loaded through libbpf, attached as BPF netfilter links, and pinned.

libbpf (Debian's ``libbpf1``, through ctypes) applies the object's CO-RE relocations
against ``/sys/kernel/btf/vmlinux``, reuses maps already pinned under the node's pin
directory and creates the rest. The links are pinned beside the maps: the kernel keeps
counting and recording while no agent runs, and a restarted agent reads on from the
same counters and ring. A link is replaced only when the pinned one runs another build
of the object (meta[1] holds the digest of the object the links run).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import secrets
import struct
from pathlib import Path
from typing import Any

from natlens import netns
from natlens.agent.decode.counters import CounterKey, CounterValue
from natlens.agent.sources import bpf_counters
from natlens.agent.sources.ebpf_filter import (
    BpfUnavailable,
    captured_output,
    compile_reason,
    ensure_bpffs,
)

log = logging.getLogger("natlens.agent")

OBJECT = Path(__file__).with_name("hook.bpf.o")
OBJECT_ENV = "NATLENS_BPF_OBJECT"  # another place for the compiled object (packagers)
SOURCE = Path(__file__).with_name("hook.bpf.c")
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
PROGRAM = b"natlens_hook"
CLOSES = b"natlens_closes"
# Pinned: what the pinned link's program and a later agent's close filter share.
MAPS = ("counters", "stats", "meta", "config", "records", "open")
BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45
BPF_LINK_CREATE = 28
SYS_BPF = 321  # x86-64
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
NF_INET_LOCAL_IN, NF_INET_POST_ROUTING = 1, 4
# Just before conntrack confirms the entry, after every NAT hook. Confirmation runs at
# INT_MAX (NF_IP_PRI_CONNTRACK_CONFIRM), except at IPv6's LOCAL_IN, where it runs at
# INT_MAX - 1 (nf_conntrack_proto.c); the kernel refuses a BPF link at a priority
# another hook holds (EBUSY), so a taken one is retried a step earlier, up to 8 steps.
CONFIRM = 2**31 - 1
# (pin name, protocol family, hook, the first priority to try)
HOOKS = (("link_in4", NFPROTO_IPV4, NF_INET_LOCAL_IN, CONFIRM - 1),
         ("link_post4", NFPROTO_IPV4, NF_INET_POST_ROUTING, CONFIRM - 1),
         ("link_in6", NFPROTO_IPV6, NF_INET_LOCAL_IN, CONFIRM - 2),
         ("link_post6", NFPROTO_IPV6, NF_INET_POST_ROUTING, CONFIRM - 1))
STEPS = 8
# Names of the stats array's slots, in the order of the enum in hook.bpf.c.
STATS = ("new", "non_dnat", "map_full", "sampled_out", "recorded", "ring_full", "closed",
         "close_malformed", "close_unknown")
# (reason shipped in LostEvents, slot of the stats array)
LOSSES = (("map-full", "map_full"), ("sampling", "sampled_out"),
          ("ring-overflow", "ring_full"), ("malformed", "close_malformed"))
# The program counts an entry before conntrack confirms it; when two packets of one flow
# race (UDP queries from one port on two CPUs), the loser's entry is merged into the
# winner's or dropped at confirmation, after the count. The kernel counts those in
# clash_resolve and insert_failed: reported under this reason, never silent.
CLASH = "conntrack-clash"
CT_STAT = "/proc/thread-self/net/stat/nf_conntrack"
CONFIG = struct.Struct("=IIII")  # struct config


def _libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpfUnavailable(f"libbpf is not installed ({e}); install libbpf1") from e
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
            ("bpf_object__open_file", vp, [cp, vp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_object__find_map_by_name", vp, [vp, cp]),
            ("bpf_program__set_type", i, [vp, i]),
            ("bpf_program__set_expected_attach_type", i, [vp, i]),
            ("bpf_map__set_pin_path", i, [vp, cp]),
            ("bpf_map__set_max_entries", i, [vp, ctypes.c_uint32]),
            ("bpf_map__max_entries", ctypes.c_uint32, [vp]),
            ("bpf_map__type", i, [vp]),
            ("bpf_map__key_size", ctypes.c_uint32, [vp]),
            ("bpf_map__value_size", ctypes.c_uint32, [vp]),
            ("bpf_map__map_flags", ctypes.c_uint32, [vp]),
            ("bpf_program__set_autoload", i, [vp, ctypes.c_bool]),
            ("bpf_obj_get_info_by_fd", i, [i, vp, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_program__fd", i, [vp]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_obj_pin", i, [i, cp]),
            ("bpf_obj_get", i, [cp]),
            ("bpf_map_lookup_elem", i, [i, vp, vp]),
            ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
            ("bpf_map_lookup_batch", i, [i, vp, vp, vp, vp, vp, vp]),
            ("libbpf_num_possible_cpus", i, [])):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


def object_path() -> Path:
    return Path(os.environ.get(OBJECT_ENV) or OBJECT)


def object_digest(path: Path) -> int:
    """The build of the object, as a u64 for meta[1] (never 0: 0 is "none")."""
    return int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "little") | 1


def why_not() -> str | None:
    """Why this machine cannot run the hook source, checked before anything loads."""
    path = object_path()
    if not path.is_file():
        return (f"{path} is not built (scripts/build_bpf.sh compiles it; make install "
                f"runs it)")
    if not Path(VMLINUX_BTF).is_file():
        return f"the kernel has no BTF ({VMLINUX_BTF} is missing)"
    return None


def clash_total(text: str) -> int:
    """clash_resolve + insert_failed over every CPU, from /proc/net/stat/nf_conntrack
    (a header line, then one line of hex counters per CPU)."""
    lines = text.split("\n")
    names = lines[0].split()
    cols = [names.index(n) for n in ("clashres", "insert_failed") if n in names]
    return sum(int(f[c], 16) for line in lines[1:] if (f := line.split()) for c in cols)


class ClashCounter:
    """The namespace's running total of clashes. /proc/thread-self/net is the opening
    thread's namespace, and an open file stays bound to it: opened once, inside."""

    def __init__(self, ns: str | None) -> None:
        with netns.entered(ns):
            self._f = open(CT_STAT)  # noqa: SIM115 - read on every counters interval

    def total(self) -> int:
        self._f.seek(0)
        return clash_total(self._f.read())

    def close(self) -> None:
        self._f.close()


def link_before_confirm(prog_fd: int, pf: int, hook: int, first: int) -> int:
    """A link at ``first``, or the nearest earlier priority no other hook holds."""
    for priority in range(first, first - STEPS, -1):
        try:
            return link_create(prog_fd, pf, hook, priority)
        except OSError as e:
            if e.errno != errno.EBUSY or priority == first - STEPS + 1:
                raise
    raise AssertionError("unreachable")


def link_create(prog_fd: int, pf: int, hook: int, priority: int) -> int:
    """BPF_LINK_CREATE for a netfilter hook (libbpf 1.1 predates netfilter links)."""
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("=IIIIIIiI", attr, 0, prog_fd, 0, BPF_NETFILTER, 0, pf, hook,
                     priority, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_BPF, BPF_LINK_CREATE, attr, ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_LINK_CREATE: {os.strerror(err)}")
    return int(fd)


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (the kernel fills what the length covers)."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32)]


def pinned_map_info(lib: ctypes.CDLL, path: str) -> MapInfo | None:
    """A pinned map's layout, or None when nothing is pinned there."""
    if not os.path.exists(path):
        return None
    fd = lib.bpf_obj_get(path.encode())
    if fd < 0:
        return None
    try:
        info, size = MapInfo(), ctypes.c_uint32(ctypes.sizeof(MapInfo))
        if lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) < 0:
            return None
        return info
    finally:
        os.close(fd)


def declared(lib: ctypes.CDLL, m: int) -> tuple[int, int, int, int, int]:
    """The object's map as it would be created: what libbpf checks a pinned one against."""
    return (lib.bpf_map__type(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
            lib.bpf_map__max_entries(m), lib.bpf_map__map_flags(m))


class HookProgram:
    """The loaded object, its maps and its links, for one node's pin directory."""

    def __init__(self, pin: str, ns: str | None = None, records: bool = True,
                 sample: int = 1, ring_bytes: int | None = None,
                 closes: bool = False) -> None:
        """``ring_bytes``: the record ring's size, a power-of-two number of pages (tests
        make it small to fill it); a ring already pinned keeps its size. ``closes``: the
        close filter will run, so the program keeps each record's id for it."""
        if sample < 1:
            raise ValueError("sample rate must be at least 1")
        reason = why_not()
        if reason:
            raise BpfUnavailable(reason)
        self.pin, self.ns = pin, ns
        self.lib = lib = _libbpf()
        self.mounted = ensure_bpffs(pin)
        self.fresh = not Path(pin, "counters").exists()
        with captured_output() as err:
            obj = lib.bpf_object__open_file(str(object_path()).encode(), None)
            if not obj:
                e = OSError(ctypes.get_errno(), "bpf_object__open_file")
                raise BpfUnavailable(f"hook program did not open: {compile_reason(err, e)}")
            self.obj = obj
            prog = lib.bpf_object__find_program_by_name(obj, PROGRAM)
            closes_prog = lib.bpf_object__find_program_by_name(obj, CLOSES)
            maps = {name.decode(): lib.bpf_object__find_map_by_name(obj, name)
                    for name in (n.encode() for n in MAPS)}
            missing = [n for n, p in (("natlens_hook", prog), ("natlens_closes", closes_prog),
                                      *maps.items()) if not p]
            if missing:  # libbpf would dereference NULL: an object of another version
                lib.bpf_object__close(obj)
                raise BpfUnavailable(f"{object_path()} has no {', '.join(missing)}: it was "
                                     "built from another version (scripts/build_bpf.sh)")
            lib.bpf_program__set_type(prog, BPF_PROG_TYPE_NETFILTER)
            lib.bpf_program__set_expected_attach_type(prog, BPF_NETFILTER)
            # The close filter's walk is most of the verifier's work (0.3 s of a start):
            # verified only when this agent reads closes.
            lib.bpf_program__set_autoload(closes_prog, closes)
            if ring_bytes:
                lib.bpf_map__set_max_entries(maps["records"], ring_bytes)
            self.stale = self._unpin_stale(maps)
            if self.stale:
                self.fresh = True
            for name, m in maps.items():
                lib.bpf_map__set_pin_path(m, os.path.join(pin, name).encode())
            rc = lib.bpf_object__load(obj)
        if self.stale:  # said here: the load's output is captured above
            log.warning("hook: the pinned %s in %s were laid out by another build; replaced, "
                        "so counting starts a new epoch", ", ".join(self.stale), pin)
        if rc < 0:
            lib.bpf_object__close(obj)
            e = OSError(-rc, os.strerror(-rc))
            raise BpfUnavailable(f"hook program did not load: {compile_reason(err, e)}")
        self.prog_fd = lib.bpf_program__fd(prog)
        self.closes_fd = lib.bpf_program__fd(closes_prog) if closes else -1
        self.fds = {name: lib.bpf_map__fd(m) for name, m in maps.items()}
        self.ring_bytes = int(lib.bpf_map__max_entries(maps["records"]))
        self.ncpus = lib.libbpf_num_possible_cpus()
        self.clashes = ClashCounter(ns)
        self._keys: dict[bytes, CounterKey] = {}
        if self.fresh or self._meta(0) == 0:
            self.fresh = True
            self._set_meta(2, self.clashes.total())
            self._set_meta(0, secrets.randbits(63) | 1)
        self.epoch = f"{self._meta(0):016x}"
        self.links = self.attach()
        self.configure(records, sample, closes=closes)

    def _unpin_stale(self, maps: dict[str, int]) -> list[str]:
        """Pinned maps another build laid out otherwise (libbpf would refuse to load
        over them), unpinned with the links that use them: this load starts a new epoch.
        A pinned ring keeps its size (the object's map takes it). The names unpinned."""
        pinned = {}
        for name, m in maps.items():
            info = pinned_map_info(self.lib, os.path.join(self.pin, name))
            if info is not None:
                pinned[name] = info
                if name == "records":
                    self.lib.bpf_map__set_max_entries(m, info.max_entries)
        stale = [name for name, info in pinned.items()
                 if (info.type, info.key_size, info.value_size, info.max_entries,
                     info.map_flags) != declared(self.lib, maps[name])]
        if not stale:
            return []
        for name in (*pinned, *(h[0] for h in HOOKS)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.pin, name))
        return stale

    # ---- links

    def attach(self) -> str:
        """Keep pinned links that run this build; otherwise (re)create them. Says which."""
        digest = object_digest(object_path())
        pins = [os.path.join(self.pin, name) for name, _, _, _ in HOOKS]
        present = [p for p in pins if os.path.exists(p)]
        if present and self._meta(1) == digest:
            return "reused"
        for p in present:  # another build: its links go (unpinned and unheld, detached)
            os.unlink(p)
        with netns.entered(self.ns):
            for (name, pf, hook, first), path in zip(HOOKS, pins, strict=True):
                try:
                    fd = link_before_confirm(self.prog_fd, pf, hook, first)
                except OSError as e:
                    if pf == NFPROTO_IPV6 and e.errno in (errno.EAFNOSUPPORT,
                                                          errno.EOPNOTSUPP):
                        log.info("hook: no IPv6 netfilter in this namespace; IPv4 only")
                        continue
                    raise BpfUnavailable(f"hook program did not attach ({name}): "
                                         f"{e.strerror}") from e
                try:
                    if self.lib.bpf_obj_pin(fd, path.encode()) < 0:
                        err = ctypes.get_errno()
                        raise BpfUnavailable(f"pinning {path}: {os.strerror(err)}")
                finally:
                    os.close(fd)
        self._set_meta(1, digest)
        return "replaced" if present else "created"

    def detach(self) -> None:
        """Remove the pinned links: the kernel stops counting (``--detach`` and tests)."""
        for name, _, _, _ in HOOKS:
            p = os.path.join(self.pin, name)
            if os.path.exists(p):
                os.unlink(p)
        self._set_meta(1, 0)

    # ---- maps

    def _meta(self, slot: int) -> int:
        key, value = ctypes.c_uint32(slot), ctypes.c_uint64(0)
        self.lib.bpf_map_lookup_elem(self.fds["meta"], ctypes.byref(key), ctypes.byref(value))
        return int(value.value)

    def _set_meta(self, slot: int, v: int) -> None:
        key, value = ctypes.c_uint32(slot), ctypes.c_uint64(v)
        self.lib.bpf_map_update_elem(self.fds["meta"], ctypes.byref(key),
                                     ctypes.byref(value), 0)

    def configure(self, records: bool, sample: int = 1, seed: int | None = None,
                  closes: bool = False) -> None:
        """Set the mode in the running program (a map write, no reload). Without
        ``closes`` the program skips the `open` map: only the close filter reads it."""
        key = ctypes.c_uint32(0)
        value = ctypes.create_string_buffer(
            CONFIG.pack(int(records), sample, secrets.randbits(32) if seed is None else seed,
                        int(closes)), CONFIG.size)
        if self.lib.bpf_map_update_elem(self.fds["config"], ctypes.byref(key), value, 0) < 0:
            raise OSError(ctypes.get_errno(), "config map update")
        self.records, self.sample = records, sample

    def read_stats(self) -> dict[str, int]:
        out = {}
        values = (ctypes.c_uint64 * self.ncpus)()
        for i, name in enumerate(STATS):
            key = ctypes.c_uint32(i)
            self.lib.bpf_map_lookup_elem(self.fds["stats"], ctypes.byref(key), values)
            out[name] = int(sum(values))
        return out

    def read_losses(self) -> dict[str, int]:
        """Running totals of what the kernel counted but could not keep, by reason."""
        stats = self.read_stats()
        out = {reason: stats[slot] for reason, slot in LOSSES}
        out[CLASH] = max(self.clashes.total() - self._meta(2), 0)
        return out

    def read_counters(self) -> dict[CounterKey, CounterValue]:
        """Every counter, per-CPU slots summed (bpf_counters.read_counters)."""
        lib = self.lib

        def lookup(fd: int, t_in: Any, t_out: Any, keys: Any, values: Any,
                   count: Any) -> int:
            return int(lib.bpf_map_lookup_batch(fd, t_in, t_out, keys, values, count, None))

        return bpf_counters.read_counters(lookup, self.fds["counters"], self.ncpus, self._keys)

    def close(self) -> None:
        """Close our handles; the pinned maps and links stay (and keep counting)."""
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None
            self.clashes.close()
