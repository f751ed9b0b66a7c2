"""Whether a bpffs the agent mounts outlives it: read off /proc/self/mountinfo's
propagation fields (shared mounts reach the host; private and slave ones do not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from natlens.agent.sources.ebpf import propagates

HOST = """22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
91 25 0:44 / /sys/fs/bpf rw,relatime shared:40 - bpf bpf rw,mode=700
"""
NETNS_EXEC = """301 300 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw
310 301 0:77 / /sys rw,relatime - sysfs nlx-node rw
311 310 0:78 / /sys/fs/bpf rw,relatime - bpf bpf rw
"""


@pytest.mark.parametrize("text,expected", [(HOST, True), (NETNS_EXEC, False),
                                           (HOST + NETNS_EXEC, False), ("", False)])
def test_only_a_shared_mount_outlives_the_process(tmp_path: Path, text: str,
                                                  expected: bool) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(text)
    assert propagates("/sys/fs/bpf", str(info)) is expected


def test_an_unreadable_mountinfo_says_nothing(tmp_path: Path) -> None:
    assert propagates("/sys/fs/bpf", str(tmp_path / "missing")) is True
