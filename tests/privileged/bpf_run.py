"""Run the loaded socket filter on a message with BPF_PROG_TEST_RUN (no socket needed)."""

from __future__ import annotations

import ctypes
import os
import struct

BPF_PROG_TEST_RUN = 10
SYS_BPF = 321  # x86-64
ETH_HLEN = 14  # the kernel pulls an Ethernet header off test input before the program runs

_libc = ctypes.CDLL(None, use_errno=True)


def test_run(prog_fd: int, message: bytes) -> int:
    """The program's return value for ``message`` (bytes to deliver; 0 drops it)."""
    data = ctypes.create_string_buffer(b"\0" * ETH_HLEN + message)
    attr = ctypes.create_string_buffer(80)
    struct.pack_into("=IIII", attr, 0, prog_fd, 0, len(data) - 1, 0)
    struct.pack_into("=QQI", attr, 16, ctypes.addressof(data), 0, 1)
    if _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, attr, 80) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return int(struct.unpack_from("=I", attr, 4)[0])
