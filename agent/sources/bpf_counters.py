"""The counters map both kernel sources fill (struct nl_key → struct nl_val in
ctnetlink_walk.h), read in batches and summed over CPUs.

bcc's per-key iteration took 2.5 s for 100,000 keys (two syscalls and ctypes objects
per key); BPF_MAP_LOOKUP_BATCH in batches of 8,192 with numpy summing takes a small
fraction of that (BENCHMARKS.md, "eBPF maps at 10,000 × 10"). The eBPF source calls
the batch lookup through bcc's library, the hook source through libbpf's: the caller
hands in the call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy

from natlens.agent.decode.counters import CounterKey, CounterValue, decode_key

KEY_STRUCT = struct.Struct("=BBHHH16s16s")  # struct nl_key
KEY_SIZE = KEY_STRUCT.size
VALUE_WORDS = 7                             # struct nl_val: seven u64
BATCH = 8192

# (map fd, in token or None, out token, keys, values, count) -> 0 or negative: the
# argument order of bcc's bpf_lookup_batch and of libbpf's bpf_map_lookup_batch.
LookupBatch = Callable[[int, Any, Any, Any, Any, Any], int]


def read_batched(lookup: LookupBatch, fd: int, key_size: int, words: int,
                 ncpus: int) -> Iterator[tuple[bytes, tuple[int, ...]]]:
    """(raw key, per-CPU sums) of every entry of a per-CPU hash map of u64 structs."""
    keys = ctypes.create_string_buffer(BATCH * key_size)
    values = ctypes.create_string_buffer(BATCH * words * 8 * ncpus)
    token_in, token_out, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
    first = True
    while True:
        count.value = BATCH
        rc = lookup(fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                    keys, values, ctypes.byref(count))
        err = ctypes.get_errno()
        n = count.value
        if n:
            sums = numpy.frombuffer(memoryview(values), dtype=numpy.uint64, count=n * ncpus * words)
            rows = sums.reshape(n, ncpus, words).sum(axis=1).tolist()
            raw = keys.raw
            for i in range(n):
                yield raw[i * key_size:(i + 1) * key_size], tuple(rows[i])
        if rc != 0:
            if err == errno.ENOENT or rc == -errno.ENOENT:  # libbpf returns -errno too
                return
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        token_in.value, first = token_out.value, False


def read_counters(lookup: LookupBatch, fd: int, ncpus: int,
                  keys: dict[bytes, CounterKey]) -> dict[CounterKey, CounterValue]:
    """Every counter, per-CPU slots summed; ``keys`` caches decoded keys across reads."""
    out: dict[CounterKey, CounterValue] = {}
    for raw, row in read_batched(lookup, fd, KEY_SIZE, VALUE_WORDS, ncpus):
        key = keys.get(raw)
        if key is None:
            fam, proto, vport, eport, _, vip, ep = KEY_STRUCT.unpack(raw)
            key = keys[raw] = decode_key(fam, proto, vip, vport, ep, eport)
        out[key] = CounterValue(*row)
    return out
