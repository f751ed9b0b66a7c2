"""Reading small datagrams: ``recv(1 MiB)`` (what the netlink source did) against
``recv_into`` one reusable buffer (what it does), per datagram, median of 5 runs.
A datagram socketpair stands in for the netlink socket: same syscall, same copy, and
300-byte messages like ctnetlink events. Run: .venv/bin/python bench/recv_buffer.py
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable

N, BURST, SIZE, RUNS = 20_000, 5, 300, 5


def per_read_us(read: Callable[[socket.socket], object]) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    msg = b"x" * SIZE
    spent = 0.0
    with a, b:
        for _ in range(N // BURST):
            for _ in range(BURST):
                a.send(msg)
            t = time.perf_counter()
            for _ in range(BURST):
                read(b)
            spent += time.perf_counter() - t
    return spent / N * 1e6


def main() -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    big = statistics.median(per_read_us(lambda s: s.recv(1 << 20)) for _ in range(RUNS))
    into = statistics.median(per_read_us(lambda s: bytes(view[:s.recv_into(buf)]))
                             for _ in range(RUNS))
    print(f"recv(1 MiB) {big:.1f} us per datagram; recv_into + copy {into:.1f} us; "
          f"ratio {into / big:.2f}")


if __name__ == "__main__":
    main()
