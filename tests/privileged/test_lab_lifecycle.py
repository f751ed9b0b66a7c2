"""The lab's own promises: unique prefixes, two labs side by side, nothing left behind
(after down, after a failed up, after Ctrl-C of run), exec into nodes and pods."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import NATLENS, SEED, natlens, netns_list, seed, write_scenario

pytestmark = pytest.mark.privileged


def test_two_labs_side_by_side_then_down_leaves_nothing() -> None:
    before = netns_list()
    a = json.loads(natlens("lab", "up", str(SEED)).stdout)
    try:
        b = json.loads(natlens("lab", "up", str(SEED)).stdout)
        assert a["prefix"] != b["prefix"]
        made = netns_list() - before
        assert all(n.startswith((a["prefix"], b["prefix"])) for n in made)
        assert len(made) == 2 * (1 + 2 + 3)  # underlay + 2 nodes + 3 pods, twice
        r = natlens("lab", "traffic", str(SEED), "--prefix", b["prefix"], "--from",
                    "front-tomcat-v1-7f8c94c6c8-lfz5m", "--service",
                    "istio-demo/bill-service:http", "--connections", "50")
        tally = json.loads(r.stdout)
        assert set(tally) == {"service", "from", "connections", "failed", "by_endpoint"}
        assert tally["failed"] == 0 and sum(tally["by_endpoint"].values()) == 50
        ambiguous = natlens("lab", "traffic", str(SEED), "--from", "x", "--service", "y",
                            check=False)
        assert ambiguous.returncode == 1 and "--prefix" in ambiguous.stderr
        out = natlens("lab", "exec", str(SEED), "--prefix", a["prefix"],
                      "bill-service-v2-6854775ffc-9n6jv", "--", "ip", "-br", "addr").stdout
        assert "10.244.2.74/24" in out
        out = natlens("lab", "exec", str(SEED), "--prefix", a["prefix"], "k8s-node2", "--",
                      "iptables-save", "-t", "nat").stdout
        assert "KUBE-SVC-PK4BNTKC2JYVE7B2" in out
    finally:
        natlens("lab", "down", str(SEED))
    assert netns_list() == before


def test_failed_up_removes_what_it_made(tmp_path: Path) -> None:
    before = netns_list()
    bad = write_scenario(tmp_path, seed(name="bad-rule",
                                        extraRules={"k8s-node1": ["-t nat -A NOPE -j ACCEPT"]}))
    r = natlens("lab", "up", bad, check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("natlens: error:") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert netns_list() == before


def test_ctrl_c_of_run_leaves_nothing() -> None:
    before = netns_list()
    p = subprocess.Popen([*NATLENS, "lab", "run", str(SEED)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(netns_list() - before) < 6:
        time.sleep(0.05)
    time.sleep(1.0)  # collector and agents are starting
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert netns_list() == before
