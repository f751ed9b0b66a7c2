"""The hook source's close filter (natlens_closes in hook.bpf.c), run by the kernel
(BPF_PROG_TEST_RUN) on DESTROY messages made like the kernel's (tests/ctmsg.py)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from natlens.agent.decode.counters import CounterValue
from natlens.agent.sources.hook_loader import HookProgram
from natlens.agent.sources.hook_ring import Ring
from tests.ctmsg import message

from .bpf_run import test_run as run

pytestmark = pytest.mark.privileged

V4_ORIG = ("10.244.1.169", "10.1.122.241", 6, 40000, 9999)
V4_REPLY = ("10.244.2.74", "10.244.1.169", 6, 80, 40000)
PLAIN_REPLY = ("10.1.122.241", "10.244.1.169", 6, 9999, 40000)  # no DNAT


@pytest.fixture
def prog(bpffs: Path) -> Iterator[HookProgram]:
    ns = f"nl{secrets.token_hex(3)}-hk"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    p = HookProgram(str(bpffs / "node" / "hook"), ns, closes=True)
    try:
        yield p
    finally:
        p.close()
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_a_close_adds_bytes_packets_and_duration(prog: HookProgram) -> None:
    msg = message("destroy", V4_ORIG, V4_REPLY, 12, counters=(3, 180, 2, 320),
                  ts=(1_000_000_000, 1_250_000_000))
    assert run(prog.closes_fd, msg) == 0  # nothing queued on the socket
    (v,) = prog.read_counters().values()
    assert v == CounterValue(0, 1, 3, 180, 2, 320, 250_000_000)
    stats = prog.read_stats()
    # Its decision was never recorded (the hook was not attached then): no record.
    assert (stats["closed"], stats["close_unknown"]) == (1, 1)
    ring = Ring(prog.fds["records"], prog.ring_bytes)
    try:
        assert ring.pending() == 0
    finally:
        ring.close()


def test_a_close_that_is_not_a_dnat_decision_is_left_alone(prog: HookProgram) -> None:
    assert run(prog.closes_fd, message("destroy", V4_ORIG, PLAIN_REPLY, 13)) == 0
    assert prog.read_counters() == {} and prog.read_stats()["closed"] == 0


def test_a_malformed_close_is_counted_as_lost(prog: HookProgram) -> None:
    m = bytearray(message("destroy", V4_ORIG, V4_REPLY, 14))
    m[20:22] = (2).to_bytes(2, "little")  # first attribute claims a length below its header
    assert run(prog.closes_fd, bytes(m)) == 0
    assert prog.read_losses()["malformed"] == 1 and prog.read_counters() == {}
