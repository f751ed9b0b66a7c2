"""Reading small datagrams, per datagram, median of 5 runs: ``recv(1 MiB)`` (what the
netlink source did first), ``recv_into`` one reusable buffer plus a copy (what it did
next), and recvmmsg through ctypes into slots read in place (what it does:
agent/sources/multirecv.py).
A datagram socketpair stands in for the netlink socket: same syscalls, same copy, and
300-byte messages like ctnetlink events, BURST queued per read-out (at 30,000 events/s
the agent finds about 150 after its 5 ms wait).
Run: .venv/bin/python bench/recv_buffer.py   (BURST=5 for the earlier comparison)
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable

from natlens.agent.sources.multirecv import MultiRecv

N, SIZE, RUNS = 20_000, 300, 5
BURST = int(os.environ.get("BURST", "50"))


def per_read_us(drain: Callable[[socket.socket], int]) -> float:
    """``drain`` reads everything queued and returns how many datagrams."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    b.setblocking(False)
    msg = b"x" * SIZE
    spent = 0.0
    with a, b:
        for _ in range(N // BURST):
            for _ in range(BURST):
                a.send(msg)
            t = time.perf_counter()
            got = drain(b)
            spent += time.perf_counter() - t
            assert got == BURST, got
    return spent / N * 1e6


def one_by_one(read: Callable[[socket.socket], object]) -> Callable[[socket.socket], int]:
    def drain(s: socket.socket) -> int:
        n = 0
        while True:
            try:
                read(s)
            except BlockingIOError:
                return n
            n += 1
    return drain


def main() -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    multi: dict[int, MultiRecv] = {}

    def mmsg(s: socket.socket) -> int:
        m = multi.get(s.fileno()) or multi.setdefault(s.fileno(), MultiRecv(s.fileno()))
        n = 0
        while got := m.receive():
            n += sum(1 for off, length in got if m.buf[off])  # touch each, in place
        return n

    big = statistics.median(per_read_us(one_by_one(lambda s: s.recv(1 << 20)))
                            for _ in range(RUNS))
    into = statistics.median(per_read_us(one_by_one(
        lambda s: bytes(view[:s.recv_into(buf)]))) for _ in range(RUNS))
    many = []
    for _ in range(RUNS):
        multi.clear()
        many.append(per_read_us(mmsg))
    mm = statistics.median(many)
    print(f"{BURST} queued per read-out: recv(1 MiB) {big:.1f} us per datagram; "
          f"recv_into + copy {into:.1f} us (ratio {into / big:.2f}); recvmmsg in place "
          f"{mm:.1f} us (ratio {mm / into:.2f} to recv_into)")


if __name__ == "__main__":
    main()
