"""The hook program's pinned ring buffer, mapped into the agent and read in bulk.

The kernel maps a BPF ring as a consumer page (ours to write), a producer page and the
data twice over, so any span of records is contiguous in memory: one poll hands a span
to numpy as an array of fixed-size entries (``decode.hook_record``) with no Python call
per record. The consumer position lives in the map, not in the agent: records written
while no agent ran are still there for the next one, and a record counts as read only
once its row was handed on (``commit``).
"""

from __future__ import annotations

import mmap
import struct

import numpy

from natlens.agent.decode.hook_record import ENTRY, complete

_POS = struct.Struct("<Q")


class Ring:
    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size, self.mask, self.page = size, size - 1, page
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=0)
        self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)

    def positions(self) -> tuple[int, int]:
        """(consumer, producer): bytes read and written since the ring was made."""
        return _POS.unpack_from(self._cons, 0)[0], _POS.unpack_from(self._data, 0)[0]

    def pending(self) -> int:
        """Records waiting (whole ones, and ones still being written)."""
        cons, prod = self.positions()
        return (prod - cons) // ENTRY.itemsize

    def take(self, limit: int) -> tuple[numpy.ndarray, int]:
        """Up to ``limit`` whole records from the consumer position (a copy: the map
        stays free to close), and the position after them for ``commit``."""
        cons, prod = self.positions()
        count = min((prod - cons) // ENTRY.itemsize, limit)
        if count <= 0:
            return numpy.empty(0, dtype=ENTRY), cons
        view = numpy.frombuffer(self._data, dtype=ENTRY, count=count,
                                offset=self.page + (cons & self.mask))
        n = complete(view)
        entries = view[:n].copy()
        del view
        return entries, cons + n * ENTRY.itemsize

    def commit(self, position: int) -> None:
        """Give the records before ``position`` back to the kernel."""
        _POS.pack_into(self._cons, 0, position)

    def close(self) -> None:
        self._cons.close()
        self._data.close()
