"""Dropping privileges under a container's capability set: the DaemonSet adds NET_ADMIN,
BPF, PERFMON and SYS_ADMIN and nothing else, so the agent has no CAP_SETPCAP and
cannot narrow its bounding set. It must start anyway, keep only what it needs, and the
programs it runs (iptables-save) must not regain the rest."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.privileged

CHILD = """
import json, subprocess
from natlens.agent.privileges import describe, keep_only
# what the container runtime gives the DaemonSet's agent
first = keep_only({"CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"})
second = keep_only({"CAP_NET_ADMIN"})
status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
child = {l.split(":")[0]: int(l.split()[1], 16) for l in status.splitlines()
         if l.startswith(("CapEff", "CapPrm", "CapBnd"))}
print(json.dumps({"first": first, "second": second, "line": describe(second),
                  "child": child}))
"""

NET_ADMIN, SYS_ADMIN, PERFMON, BPF = 1 << 12, 1 << 21, 1 << 38, 1 << 39


def test_without_setpcap_the_agent_keeps_what_it_needs_and_says_so() -> None:
    import json

    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    container = NET_ADMIN | SYS_ADMIN | PERFMON | BPF
    assert out["first"] == [container, container, True]  # as root: narrowed
    assert out["second"] == [NET_ADMIN, container, False]  # no CAP_SETPCAP left
    assert out["line"].startswith("kept CAP_NET_ADMIN; the bounding set stays "
                                  "CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF")
    # a program the agent starts gets nothing beyond what the agent kept
    assert out["child"] == {"CapPrm": NET_ADMIN, "CapEff": NET_ADMIN, "CapBnd": container}
