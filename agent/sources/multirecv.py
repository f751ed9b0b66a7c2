"""recvmmsg(2): many datagrams per system call, which Python's socket module lacks.

The kernel sends each conntrack event as a datagram of its own, so at 30,000 events/s
a ``recv_into`` per event is 30,000 system calls and as many Python round trips.
bench/recv_buffer.py measures the two on the same datagrams (figures in
BENCHMARKS.md). Called through ctypes from the C library (glibc and musl both have it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_recvmmsg = _LIBC.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int

# An entry's msg_flags and msg_len, read with one unpack from the entry's msg_flags on
_FLAGS_OFF = _Mmsghdr.msg_hdr.offset + _Msghdr.msg_flags.offset
_META = struct.Struct(f"=i{_Mmsghdr.msg_len.offset - _FLAGS_OFF - 4}xI")
_STEP = ctypes.sizeof(_Mmsghdr)


class MultiRecv:
    """Up to ``vlen`` datagrams of at most ``size`` bytes each, per call, from ``fd``."""

    def __init__(self, fd: int, vlen: int = 64, size: int = 16384) -> None:
        self.fd, self.vlen, self.size = fd, vlen, size
        self.truncated = 0  # datagrams longer than ``size``: lost, counted here
        self.buf = bytearray(vlen * size)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self._iov = (_Iovec * vlen)(*(_Iovec(base + i * size, size) for i in range(vlen)))
        self._hdrs = (_Mmsghdr * vlen)()
        for i in range(vlen):
            h = self._hdrs[i].msg_hdr
            h.msg_iov = ctypes.pointer(self._iov[i])
            h.msg_iovlen = 1
        self._raw = memoryview(self._hdrs).cast("B")

    def receive(self) -> list[tuple[int, int]]:
        """(offset in ``buf``, length) of each datagram queued now, without waiting;
        [] when none is. Raises OSError (ENOBUFS included) like ``recv`` would.

        A datagram longer than ``size`` arrives cut short, its rest gone: it is left
        out and counted in ``truncated`` for the caller to report."""
        n = _recvmmsg(self.fd, self._hdrs, self.vlen, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        out: list[tuple[int, int]] = []
        raw, size, meta = self._raw, self.size, _META.unpack_from
        for i in range(n):
            flags, length = meta(raw, i * _STEP + _FLAGS_OFF)
            if flags & MSG_TRUNC:
                self.truncated += 1
                continue
            out.append((i * size, length))
        return out
