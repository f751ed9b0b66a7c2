"""recvmmsg through ctypes, on a real datagram socket pair."""

import errno
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.sources.multirecv import MultiRecv


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=40), st.integers(1, 8))
def test_every_datagram_once_in_order(datagrams: list[bytes], vlen: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        for d in datagrams:
            a.send(d)
        multi = MultiRecv(b.fileno(), vlen=vlen, size=256)
        got: list[bytes] = []
        while chunk := multi.receive():
            assert len(chunk) <= vlen
            got += [bytes(multi.buf[off:off + n]) for off, n in chunk]
        assert got == [d for d in datagrams if len(d) <= 256]
        assert multi.truncated == sum(1 for d in datagrams if len(d) > 256)
        assert multi.receive() == []  # nothing queued: no wait, no error


def test_a_pending_socket_error_is_raised_like_recv() -> None:
    """As ENOBUFS on the netlink socket: the error the kernel queued comes out as
    OSError. Here an ICMP port unreachable on loopback (ECONNREFUSED)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.send(b"x")
        time.sleep(0.05)
        with pytest.raises(OSError) as e:
            MultiRecv(s.fileno()).receive()
        assert e.value.errno == errno.ECONNREFUSED
