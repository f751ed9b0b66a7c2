"""Drop what the agent no longer needs once it is set up.

Loading the eBPF program, pinning on bpffs, switching sysctls and subscribing to
ctnetlink need CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_NET_ADMIN; afterwards the
agent only reads the node's rules (``iptables-save``/``nft``: CAP_NET_ADMIN), reads its
own maps (the bpf() syscall refuses even that without CAP_BPF when unprivileged BPF is
disabled) and, with ``--netns``, enters the namespace to read them (``nsenter``:
CAP_SYS_ADMIN). Everything else is removed from the effective, permitted, inheritable,
ambient sets, and no-new-privileges is set, so ``iptables-save`` started later cannot
get more back. The bounding set is narrowed too where the agent may (CAP_SETPCAP, as
full root has); in a container the runtime has already cut it to what the manifest
adds, and without CAP_SETPCAP it stays so: no-new-privileges is what keeps a program
the agent runs from regaining those (an exec never gains beyond the permitted set).

Capabilities belong to threads: this runs before the agent starts any thread that
could start a program.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from pathlib import Path
from typing import NamedTuple

from natlens.errors import NatlensError

CAP = {"CAP_SETPCAP": 8, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21,
       "CAP_PERFMON": 38, "CAP_BPF": 39}
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAPSET = {"x86_64": 126, "aarch64": 91}
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(NatlensError, OSError):
    """The capability sets could not be changed; the message says which call failed."""


def needed(ebpf: bool, netns: bool) -> set[str]:
    keep = {"CAP_NET_ADMIN"}
    if ebpf:
        keep.add("CAP_BPF")
    if netns:
        keep.add("CAP_SYS_ADMIN")
    return keep


# linux/capability.h, for the log line
NAMES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
         "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
         "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
         "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
         "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
         "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
         "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")


class Kept(NamedTuple):
    """The sets after ``keep_only``: effective (= permitted) and bounding."""

    mask: int
    bounding: int
    narrowed: bool  # whether the bounding set could be cut to ``mask``


def capability_set(field: str = "CapEff") -> int:
    """One of this thread's capability sets, as /proc shows it."""
    tid = threading.get_native_id()
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    return 0


def effective() -> int:
    return capability_set("CapEff")


def keep_only(names: set[str]) -> Kept:
    """Reduce this thread's capabilities to ``names`` (those it has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr = CAPSET.get(os.uname().machine)
    if nr is None:
        raise PrivilegeError(f"capset: unknown architecture {os.uname().machine}")
    mask = sum(1 << CAP[n] for n in names) & effective()
    extra = capability_set("CapBnd") & ~mask
    narrowed = not extra or bool(effective() & (1 << CAP["CAP_SETPCAP"]))
    for cap in range(extra.bit_length() if narrowed else 0):
        if extra & (1 << cap) and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise PrivilegeError(err, f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(err)}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    header = ctypes.create_string_buffer(struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0))
    lo, hi = mask & 0xFFFFFFFF, mask >> 32
    data = ctypes.create_string_buffer(struct.pack("6I", lo, lo, 0, hi, hi, 0))
    if libc.syscall(nr, header, data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")
    return Kept(mask, capability_set("CapBnd"), narrowed)


def names_of(mask: int) -> str:
    return ", ".join(f"CAP_{NAMES[c]}" if c < len(NAMES) else f"capability {c}"
                     for c in range(mask.bit_length()) if mask & (1 << c)) or "none"


def describe(k: Kept) -> str:
    """One line for the log: what the agent kept, and what its bounding set is."""
    if k.narrowed:
        return f"kept {names_of(k.mask)}; dropped the rest, bounding set too"
    return (f"kept {names_of(k.mask)}; the bounding set stays {names_of(k.bounding)} as the "
            "container runtime gave it (no CAP_SETPCAP to narrow it), and no-new-privileges "
            "keeps the programs the agent runs from regaining the rest")
