"""The nf_tables generation request and answer, against a kernel's own bytes, and fuzzed."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.rules import generation as g

# The kernel's (6.18) answer to gen_request(7) in a fresh namespace: NFT_MSG_NEWGEN,
# NFTA_GEN_ID 1, NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME "python".
KERNEL_ANSWER = bytes.fromhex(
    "300000000f0a000007000000733a00000000000108000100000000010800020000003a730b00"
    "0300707974686f6e0000")


def test_the_kernel_answer_gives_the_generation() -> None:
    assert g.parse_gen_reply(KERNEL_ANSWER, 7) == 1


def test_an_answer_to_another_request_is_not_taken() -> None:
    assert g.parse_gen_reply(KERNEL_ANSWER, 8) is None


def test_the_request_is_what_the_kernel_answered() -> None:
    req = g.gen_request(7)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, flags, seq, pid) == (len(req), 0x0A10, 1, 7, 0)


def test_a_refusal_is_an_error_with_its_errno() -> None:
    err = struct.pack("=IHHIIi", 20, 2, 0, 3, 0, -1)  # NLMSG_ERROR, -EPERM
    with pytest.raises(ValueError, match="errno 1"):
        g.parse_gen_reply(err, 3)


def test_an_answer_without_the_id_is_an_error() -> None:
    body = KERNEL_ANSWER[:20]  # header and nfgenmsg only
    msg = struct.pack("=I", len(body)) + body[4:]
    with pytest.raises(ValueError, match="without NFTA_GEN_ID"):
        g.parse_gen_reply(msg, 7)


@given(st.binary(max_size=80), st.integers(0, 2**32 - 1))
def test_any_bytes_give_an_id_none_or_a_value_error(buf: bytes, seq: int) -> None:
    try:
        got = g.parse_gen_reply(buf, seq)
    except ValueError:
        return
    assert got is None or 0 <= got < 2**32


@given(st.integers(0, len(KERNEL_ANSWER) - 1), st.integers(0, 255))
def test_a_corrupted_kernel_answer_never_escapes_as_another_error(at: int, byte: int) -> None:
    buf = bytearray(KERNEL_ANSWER)
    buf[at] = byte
    try:
        got = g.parse_gen_reply(bytes(buf), 7)
    except ValueError:
        return
    assert got is None or 0 <= got < 2**32


@pytest.mark.parametrize(("mode", "version", "expected"), [
    ("nftables", "", True),
    ("iptables", "iptables v1.8.9 (nf_tables)\n", True),
    ("iptables", "iptables v1.8.9 (legacy)\n", False),
    ("iptables", "", False),
    ("ipvs", "iptables v1.8.9 (nf_tables)\n", False),
    ("", "iptables v1.8.9 (nf_tables)\n", False),
])
def test_the_generation_is_trusted_only_where_it_moves(mode: str, version: str,
                                                       expected: bool) -> None:
    assert g.tracks(mode, version) is expected
