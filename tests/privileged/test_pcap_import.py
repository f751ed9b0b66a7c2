"""`tcpdump -i any` in a lab node during traffic, then `natlens pcap import`: the
report's counts equal the client tally exactly, judged against the node's rules, both
into a database file and shipped to a running collector."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import SEED, SERVICE, free_port, natlens, observed, start, traffic, wait_for

pytestmark = pytest.mark.privileged


def _settled(path: Path) -> bool:
    """The file did not grow for half a second."""
    before = path.stat().st_size
    time.sleep(0.5)
    return path.stat().st_size == before


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One capture of 600 connections on node 2 (and its rules), shared by the tests."""
    tmp = tmp_path_factory.mktemp("capture")
    lab = json.loads(natlens("lab", "up", str(SEED)).stdout)
    try:
        ns = lab["nodes"]["k8s-node2"]
        cap, rules = tmp / "node2.pcap", tmp / "node2.iptables-save"
        rules.write_text(subprocess.run(["ip", "netns", "exec", ns, "iptables-save"],
                                        capture_output=True, text=True, check=True).stdout)
        # --immediate-mode: libpcap otherwise holds packets in a ring block for up to a
        # second, and a SIGTERM in that second loses them from the file (566 of 600
        # once). Its ring has a frame per packet of the snapshot length: headers only
        # (-s 128), or the default 256 KiB frames fill it and the kernel drops.
        dump = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "any", "-U",
                                 "-n", "--immediate-mode", "-s", "128", "-w", str(cap)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: cap.exists() and cap.stat().st_size > 0, 10)
            time.sleep(0.5)
            tally = traffic(lab, 600)
            # tcpdump stops reading at SIGTERM: what it has not read yet is not written,
            # so wait until the file stops growing (a loaded machine lags)
            wait_for(lambda: _settled(cap), 20)
        finally:
            dump.terminate()
            _, err = dump.communicate(timeout=10)
    finally:
        natlens("lab", "down", str(SEED), "--prefix", lab["prefix"])
    # a capture that lost packets cannot be imported exactly: say so, not "import wrong"
    assert "\n0 packets dropped by kernel" in err, err
    yield {"cap": str(cap), "rules": str(rules), "tally": tally}


def test_tcpdump_any_then_import_is_exact(capture: dict[str, Any], tmp_path: Path) -> None:
    db = tmp_path / "pcap.db"
    r = natlens("pcap", "import", capture["cap"], "--node", "k8s-node2", "--db", str(db),
                "--rules", capture["rules"], "-o", "json")
    summary = json.loads(r.stdout)
    assert summary["decisions"] == 600 and summary["truncated_at_byte"] is None
    report = json.loads(natlens("report", "--db", str(db), "-o", "json").stdout)
    (entry,) = report["services"]
    assert entry["service"] == SERVICE and observed(entry) == capture["tally"]
    assert entry["verdict"] in ("consistent", "insufficient-data")
    rows = json.loads(natlens("query", "decisions", "--db", str(db), "-o", "json").stdout)
    assert len(rows) == 600 and {x["source"] for x in rows} == {"pcap"}


def test_import_shipped_twice_to_a_collector_is_stored_once(capture: dict[str, Any],
                                                            tmp_path: Path) -> None:
    port, db = free_port(), tmp_path / "collector.db"
    col = start(["collector", "--insecure", "--db", str(db), "--listen",
                 f"127.0.0.1:{port}"], tmp_path / "collector.log")
    try:
        wait_for(lambda: "collector listening" in (tmp_path / "collector.log").read_text())
        for _ in range(2):
            r = natlens("pcap", "import", capture["cap"], "--node", "k8s-node2",
                        "--collector", f"127.0.0.1:{port}", "--insecure",
                        "--rules", capture["rules"], "--ack-timeout", "20", timeout=120)
            assert "600 decisions shipped to" in r.stdout
    finally:
        col.terminate()
        col.wait(timeout=30)
    report = json.loads(natlens("report", "--db", str(db), "-o", "json").stdout)
    (entry,) = report["services"]
    assert observed(entry) == capture["tally"] and entry["total"] == 600
