"""The conntrack socket: ctnetlink NEW and DESTROY events from a node's namespace, and
dumps of its table (the kernel I/O of the netlink and eBPF sources).

Losses are measured, not guessed: when the socket's receive buffer overflows, recv()
fails with ENOBUFS and the kernel counts every event it dropped for this socket in the
Drops column of /proc/net/netlink; ``events`` says how many.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from natlens import netns
from natlens.agent.decode.ctnetlink import (
    NETLINK_NETFILTER,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    CtEvent,
    DecodeError,
    Done,
    NetlinkError,
    Values,
    dump_request,
    event_messages,
    messages,
)
from natlens.agent.sources.multirecv import MultiRecv

SO_RCVBUFFORCE = 33
DEFAULT_RCVBUF = 64 << 20
RECV_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Overflow:
    """Events lost: dropped by the kernel for this socket (``enobufs``, counted from
    /proc/net/netlink), received but undecodable (``malformed``), or longer than a
    receive slot (``truncated``)."""

    lost: int
    reason: str = "enobufs"


def socket_drops(inode: int, proc_net_netlink: str = "/proc/thread-self/net/netlink") -> int:
    """Events the kernel dropped for the netlink socket with this inode."""
    with open(proc_net_netlink) as f:
        header = f.readline().split()
        col_drops, col_inode = header.index("Drops"), header.index("Inode")
        for line in f:
            fields = line.split()
            if len(fields) > col_inode and int(fields[col_inode]) == inode:
                return int(fields[col_drops])
    raise LookupError(f"netlink socket inode {inode} not in {proc_net_netlink}")


def enable_accounting(ns: str | None) -> list[str]:
    """Switch on per-connection byte counters and timestamps; returns what changed."""
    changed = []
    with netns.entered(ns):
        for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
            path = f"/proc/sys/net/netfilter/{key}"
            try:
                with open(path) as f:
                    if f.read().strip() == "1":
                        continue
                with open(path, "w") as f:
                    f.write("1")
                changed.append(key)
            except OSError:
                continue
    return changed


def events_disabled(ns: str | None) -> bool:
    """True when ``nf_conntrack_events`` is 0 in ``ns``: the kernel then sends no
    conntrack events at all, to natlens or to ``conntrack -E``."""
    with netns.entered(ns):
        try:
            with open("/proc/sys/net/netfilter/nf_conntrack_events") as f:
                return f.read().strip() == "0"
        except OSError:
            return False


class ConntrackSocket:
    """A ctnetlink event socket (and a dump socket) opened inside namespace ``ns``."""

    def __init__(self, ns: str | None = None, rcvbuf: int = DEFAULT_RCVBUF,
                 attach: Callable[[socket.socket], None] | None = None) -> None:
        """``attach`` runs before bind(), e.g. to put a socket filter on it."""
        self.ns = ns
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_NETFILTER)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if attach is not None:
                attach(self.sock)
            groups = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
            self.sock.bind((0, groups))
        self.inode = os.fstat(self.sock.fileno()).st_ino
        # Events: many datagrams per system call into one buffer reused for every read
        # (bench/recv_buffer.py; BENCHMARKS.md, "recvmmsg"). The dump's reads: one
        # buffer too, as recv(1 MiB) allocates and shrinks a 1 MiB object per call.
        self._multi = MultiRecv(self.sock.fileno())
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._drops_seen = self._drops()
        self.sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)

    def _drops(self) -> int:
        with netns.entered(self.ns):
            return socket_drops(self.inode)

    def events(self, timeout: float) -> Iterator[list[Values] | Overflow]:
        """Everything queued now, a list of ``event_values`` per system call (up to
        64 datagrams, one event each), waiting up to ``timeout`` seconds for the first."""
        if not self._poll.poll(int(timeout * 1000)):
            return
        multi = self._multi
        while True:
            try:
                got = multi.receive()
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                drops = self._drops()
                yield Overflow(max(drops - self._drops_seen, 1))
                self._drops_seen = drops
                continue
            if multi.truncated:
                yield Overflow(multi.truncated, "truncated")
                multi.truncated = 0
            if not got:
                return
            buf, out = multi.buf, []  # decoded in place, before the next receive
            for off, n in got:
                try:
                    decoded = event_messages(buf, off, off + n)
                except DecodeError:
                    yield Overflow(1, "malformed")
                    continue
                out += [m for m in decoded if isinstance(m, tuple)]
            yield out

    def dump(self) -> list[CtEvent]:
        """The whole conntrack table, read on a separate socket."""
        with netns.entered(self.ns):
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              NETLINK_NETFILTER)
        out: list[CtEvent] = []
        with s:
            s.settimeout(10)
            s.bind((0, 0))
            seq = int(time.time()) & 0xFFFFFFFF
            s.send(dump_request(seq))
            while True:
                n = s.recv_into(self._buf)
                for m in messages(bytes(self._view[:n])):
                    if isinstance(m, Done):
                        return out
                    if isinstance(m, NetlinkError):
                        if m.errno == 0:
                            continue
                        raise OSError(m.errno, f"conntrack dump: {os.strerror(m.errno)}")
                    out.append(m)

    def close(self) -> None:
        self.sock.close()
