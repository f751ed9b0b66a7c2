"""Enter a named network namespace, per thread, without touching the root namespace.

setns(CLONE_NEWNET) changes only the calling thread, and a socket stays in the
namespace it was created in. So one process can open the ctnetlink socket inside a node
namespace and still reach the collector on the root namespace's loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return name if name.startswith("/") else os.path.join(NETNS_DIR, name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block in network namespace ``name`` (this thread only); None: stay."""
    if name is None:
        yield
        return
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(f"network namespace {name!r} does not exist") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def command(name: str | None, argv: list[str]) -> list[str]:
    """``argv`` wrapped to run inside namespace ``name`` (as a child process)."""
    if name is None:
        return argv
    return ["nsenter", f"--net={netns_path(name)}", "--", *argv]
