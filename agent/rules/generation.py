"""Whether the node's rules changed since they were last read: nf_tables' generation.

Reading the rules runs ``nft``, ``iptables-save`` and ``ip6tables-save``, three
processes every rules interval even when nothing changed (bench/idle_agent.py measures
what that costs an idle node). The kernel numbers every committed nf_tables transaction
in a namespace; asking for that number (NFT_MSG_GETGEN) is one netlink round trip. It
moves with kube-proxy's nftables mode, and with its iptables mode when iptables is the
nf_tables backend (``iptables -V`` says ``nf_tables``; Debian's default). Legacy
x_tables and IPVS changes do not move it: there the rules are read every interval.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess

from natlens import netns
from natlens.agent.decode.ctnetlink import NETLINK_NETFILTER, NLM_F_REQUEST, NLMSG_ERROR

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")   # nfgenmsg: family, version, res_id (big-endian)
_NLA = struct.Struct("=HH")


def gen_request(seq: int) -> bytes:
    """An NFT_MSG_GETGEN request."""
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
    return _HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                     NLM_F_REQUEST, seq, 0) + body


def parse_gen_reply(buf: bytes, seq: int) -> int | None:
    """The generation id in the kernel's answer to request ``seq``, None when ``buf``
    holds no answer to it (a late one to an earlier request); ValueError when the
    answer is an error or malformed."""
    off = 0
    while off + _HDR.size <= len(buf):
        length, mtype, _flags, mseq, _pid = _HDR.unpack_from(buf, off)
        if length < _HDR.size or off + length > len(buf):
            raise ValueError(f"netlink message length {length} at {off} out of bounds")
        end, body = off + length, off + _HDR.size
        if mseq == seq and mtype == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, body)[0] if end - body >= 4 else -1
            if err:  # 0 would be an acknowledgement, which is not asked for
                raise ValueError(f"NFT_MSG_GETGEN refused: errno {-err}")
        if mseq == seq and mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            a = body + _NFGEN.size
            while a + _NLA.size <= end:
                alen, atype = _NLA.unpack_from(buf, a)
                if alen < _NLA.size or a + alen > end:
                    raise ValueError(f"netlink attribute length {alen} out of bounds")
                if atype & 0x3FFF == NFTA_GEN_ID and alen >= _NLA.size + 4:
                    return int(struct.unpack_from("!I", buf, a + _NLA.size)[0])
                a += (alen + 3) & ~3
            raise ValueError("NFT_MSG_NEWGEN without NFTA_GEN_ID")
        off += (length + 3) & ~3
    return None


def tracks(mode: str, iptables_version: str) -> bool:
    """Whether the generation moves when rules of ``mode`` change, given what
    ``iptables -V`` printed."""
    if mode == "nftables":
        return True
    return mode == "iptables" and "nf_tables" in iptables_version


def iptables_version() -> str:
    """``iptables -V``, or "" without iptables."""
    try:
        return subprocess.run(["iptables", "-V"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


class Generation:
    """A netfilter netlink socket in namespace ``ns`` that reads the generation.

    Opened while the agent may still enter namespaces; read from the rules thread."""

    def __init__(self, ns: str | None) -> None:
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self._seq = 0

    def read(self, timeout: float = 5.0) -> int:
        """The current generation; OSError or ValueError when the kernel does not say."""
        self._seq += 1
        self.sock.send(gen_request(self._seq))
        while True:
            if not select.select([self.sock], [], [], timeout)[0]:
                raise TimeoutError("no answer to NFT_MSG_GETGEN")
            gen = parse_gen_reply(self.sock.recv(65536), self._seq)
            if gen is not None:
                return gen

    def close(self) -> None:
        self.sock.close()
