"""recvmmsg through ctypes, on real datagram sockets (a Unix socket pair: no root)."""

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.sources.multirecv import MultiRecv


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    return a, b


def test_nothing_queued_is_an_empty_list_not_a_wait() -> None:
    a, b = _pair()
    with a, b:
        assert MultiRecv(b.fileno(), vlen=4, size=64).receive() == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=40))
def test_every_datagram_arrives_whole_and_in_order(grams: list[bytes]) -> None:
    a, b = _pair()
    with a, b:
        for g in grams:
            a.send(g)
        m = MultiRecv(b.fileno(), vlen=8, size=256)
        got: list[bytes] = []
        while batch := m.receive():
            assert len(batch) <= 8
            got += [bytes(m.buf[off:off + n]) for off, n in batch]
        assert got == grams and m.truncated == 0


def test_a_datagram_longer_than_a_slot_is_left_out_and_counted() -> None:
    a, b = _pair()
    with a, b:
        for g in (b"x" * 10, b"y" * 100, b"z" * 20):
            a.send(g)
        m = MultiRecv(b.fileno(), vlen=4, size=64)
        got = [bytes(m.buf[off:off + n]) for off, n in m.receive()]
        assert got == [b"x" * 10, b"z" * 20] and m.truncated == 1
