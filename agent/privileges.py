"""Drop what the agent no longer needs once it is set up.

Loading the eBPF program, pinning on bpffs, switching sysctls and subscribing to
ctnetlink need CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_NET_ADMIN; afterwards the
agent only reads the node's rules (``iptables-save``/``nft``: CAP_NET_ADMIN), reads its
own maps (the bpf() syscall refuses even that without CAP_BPF when unprivileged BPF is
disabled) and, with ``--netns``, enters the namespace to read them (``nsenter``:
CAP_SYS_ADMIN). Everything else is removed from the effective, permitted, inheritable,
ambient and bounding sets — the bounding set too, so ``iptables-save`` started later
cannot get more back — and no-new-privileges is set.

Capabilities belong to threads: this runs before the agent starts any thread that
could start a program.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from pathlib import Path

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


def effective() -> int:
    """This thread's effective set, as /proc shows it."""
    tid = threading.get_native_id()
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def keep_only(names: set[str]) -> int:
    """Reduce this thread's capabilities to ``names`` (those it has); returns the mask."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr = CAPSET.get(os.uname().machine)
    if nr is None:
        raise PrivilegeError(f"capset: unknown architecture {os.uname().machine}")
    mask = sum(1 << CAP[n] for n in names) & effective()
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if not mask & (1 << cap) and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
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
    return mask


def describe(mask: int) -> str:
    names = [n for n, c in sorted(CAP.items(), key=lambda x: x[1]) if mask & (1 << c)]
    return ", ".join(names) or "none"
