"""A BPF ring buffer read through its memory map, every ready record per call.

bcc's ``ring_buffer_poll`` calls back into Python through ctypes once per record, which
at 30,000 decisions/s cost the agent more than decoding them (bench/source_cpu.py,
BENCHMARKS.md). The ring is memory the kernel lets user space map (linux
kernel/bpf/ringbuf.c): a consumer-position page the reader writes, then a producer-
position page and the data pages, mapped twice in a row so that a record crossing the
end reads as one piece. Each record starts with a 32-bit length whose top bits say
"still being written" (busy) and "discarded", and a 32-bit page offset.

The reader relies on x86-64's ordering of plain loads and stores: loads are not
reordered with older loads (the producer position, then a record's header, then its
body), and the store of the consumer position comes after the loads of what it frees.
Elsewhere ``usable()`` is False and the caller uses bcc's reader.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import select
import struct

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_POS = struct.Struct("@Q")  # native and aligned: one 8-byte load
_LEN = struct.Struct("@I")


def usable() -> bool:
    """Whether this machine's memory ordering lets plain Python reads consume the ring."""
    return platform.machine() in ("x86_64", "AMD64")


class RingReader:
    """The ring buffer map ``fd`` of ``size`` bytes (a power of two pages)."""

    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._view = memoryview(self._data)
        # One 8-byte store: struct.pack_into zeroes its target first, and a kernel
        # that read that zero would see the ring full and fail the program's output
        # (it did, a few records per 100,000, until this was found).
        self._consumer = ctypes.c_uint64.from_buffer(self._cons)
        self._page, self._mask = page, size - 1
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.short = 0  # records shorter than asked for: skipped, counted here

    def wait(self, timeout: float) -> None:
        """Until the program wakes us (it asks only now and then) or ``timeout`` s."""
        self._poll.poll(int(timeout * 1000))

    def drain(self, record: struct.Struct, limit: int = 4096) -> list[tuple[object, ...]]:
        """Up to ``limit`` committed records, unpacked with ``record``, oldest first;
        their space goes back to the kernel before this returns. [] when none is ready.

        Call again until []: the limit bounds both the list and the space held back
        from the kernel while the caller handles it. A record shorter than ``record``
        is skipped and counted in ``short``; one still being written ends the read
        (the next call takes it)."""
        view, page, mask = self._view, self._page, self._mask
        cons = self._consumer.value
        prod = _POS.unpack_from(self._data, 0)[0]
        size, unpack = record.size, record.unpack_from
        out: list[tuple[object, ...]] = []
        while cons < prod and len(out) < limit:
            off = page + (cons & mask)
            head = _LEN.unpack_from(view, off)[0]
            if head & BUSY:
                break
            length = head & ~(BUSY | DISCARD)
            if not head & DISCARD:
                if length >= size:
                    out.append(unpack(view, off + HEADER))
                else:
                    self.short += 1
            cons += (length + HEADER + 7) & ~7
        self._consumer.value = cons
        return out

    def close(self) -> None:
        del self._consumer  # the map's buffer is exported until then
        self._view.release()
        self._data.close()
        self._cons.close()
