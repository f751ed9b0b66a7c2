"""Collector replicas on one PostgreSQL database, in a real lab: an agent given both
fails over when the one it uses is killed mid-traffic, the database stopped under
traffic loses nothing, and every total is exact against the client's tally."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.pgserver import PgServer, started
from tests.stores import rows

from .helpers import free_port, start, traffic, wait_for

pytestmark = pytest.mark.privileged
SERVICE = "istio-demo/bill-service:http"


def collector(url: str, tmp: Path, name: str, http: bool = False) -> tuple[Any, int, int]:
    port, web = free_port(), free_port()
    argv = ["collector", "--insecure", "--db", url, "--listen", f"127.0.0.1:{port}"]
    if http:
        argv += ["--http", f"127.0.0.1:{web}"]
    p = start(argv, tmp / f"{name}.log")
    assert p.stdout and p.stdout.readline().startswith(("listening", "http")), \
        (tmp / f"{name}.log").read_text()
    return p, port, web


def agent(lab: dict[str, Any], ports: list[int], tmp: Path) -> subprocess.Popen[str]:
    return start(["agent", "--insecure", "--collector",
                  ",".join(f"127.0.0.1:{p}" for p in ports), "--node", "k8s-node2",
                  "--netns", lab["nodes"]["k8s-node2"], "--source", "netlink",
                  "--drain-timeout", "120"], tmp / "agent.log")


def stored(url: str) -> dict[str, int]:
    """Connections stored per endpoint: NEW decisions (a DESTROY ends one of them)."""
    return {ep: int(n) for ep, n in rows(
        url, "SELECT endpoint, COUNT(*) FROM decisions WHERE event = 'new' GROUP BY endpoint")}


def in_background(lab: dict[str, Any], n: int) -> tuple[threading.Thread, dict[str, int]]:
    tally: dict[str, int] = {}
    t = threading.Thread(target=lambda: tally.update(traffic(lab, n)))
    t.start()
    return t, tally


def stop(*procs: subprocess.Popen[str], log: Path | None = None) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            assert p.wait(timeout=150) == 0 or p.returncode == -signal.SIGKILL, \
                log.read_text()[-3000:] if log else ""
        except subprocess.TimeoutExpired:
            p.kill()
            raise


@pytest.fixture
def own_pg() -> Any:
    """A server of the test's own: it is stopped and started again."""
    server = started()
    yield server
    server.close()


def test_kill_9_of_the_replica_in_use_fails_over_and_totals_are_exact(
        lab: dict[str, Any], pg_server: PgServer, tmp_path: Path) -> None:
    url = pg_server.create_db()
    a, port_a, _ = collector(url, tmp_path, "a")
    b, port_b, _ = collector(url, tmp_path, "b")
    ag = agent(lab, [port_a, port_b], tmp_path)
    try:
        wait_for(lambda: rows(url, "SELECT COUNT(*) FROM rule_snapshots")[0][0] > 0, 30)
        before = traffic(lab, 300)
        wait_for(lambda: stored(url) == before, 30)  # the agent streams to a
        t, during = in_background(lab, 1500)
        time.sleep(1.0)
        os.kill(a.pid, signal.SIGKILL)  # mid-traffic, mid-stream
        t.join()
        after = traffic(lab, 200)
    finally:
        stop(ag, log=tmp_path / "agent.log")
        stop(a, b)
    truth = {ep: before.get(ep, 0) + during.get(ep, 0) + after.get(ep, 0)
             for ep in {*before, *during, *after}}
    assert sum(truth.values()) == 2000
    assert stored(url) == truth
    log = (tmp_path / "agent.log").read_text()
    assert f"failing over to 127.0.0.1:{port_b}" in log
    # nothing twice: one row per batch key, one NEW row per conntrack entry
    assert rows(url, "SELECT COUNT(*) FROM (SELECT ct_id, time_ns FROM decisions WHERE "
                     "event = 'new' GROUP BY ct_id, time_ns HAVING COUNT(*) > 1) AS d"
                ) == [(0,)]


def test_database_stopped_under_traffic_loses_nothing(
        lab: dict[str, Any], own_pg: PgServer, tmp_path: Path) -> None:
    url = own_pg.create_db()
    a, port_a, web_a = collector(url, tmp_path, "a", http=True)
    b, port_b, _ = collector(url, tmp_path, "b")
    ag = agent(lab, [port_a, port_b], tmp_path)

    def ready() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_a}/readyz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    try:
        wait_for(lambda: rows(url, "SELECT COUNT(*) FROM rule_snapshots")[0][0] > 0, 30)
        first = traffic(lab, 300)
        wait_for(lambda: stored(url) == first, 30)
        assert ready() == 200
        own_pg.stop()
        down_at = time.monotonic()
        during = traffic(lab, 700)
        wait_for(lambda: "UNAVAILABLE" in (tmp_path / "agent.log").read_text(), 30)
        assert ready() == 503
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        assert a.poll() is None and b.poll() is None  # collectors wait for the database
        own_pg.start()
        wait_for(lambda: ready() == 200, 60)
        last = traffic(lab, 100)
        truth = {ep: first.get(ep, 0) + during.get(ep, 0) + last.get(ep, 0)
                 for ep in {*first, *during, *last}}
        wait_for(lambda: stored(url) == truth, 90)
    finally:
        stop(ag, log=tmp_path / "agent.log")
        stop(a, b)
    assert sum(truth.values()) == 1100
    assert stored(url) == truth
    log = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert "Traceback" not in log
