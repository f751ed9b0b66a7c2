"""Run real natlens processes against real lab namespaces."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
SEED = ROOT / "examples" / "seed-bill-service.yaml"
NATLENS = [sys.executable, "-m", "natlens"]
CLIENT = "front-tomcat-v1-7f8c94c6c8-lfz5m"
SERVICE = "istio-demo/bill-service:http"


def natlens(*args: str, check: bool = True,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run natlens; one that overruns ``timeout`` (kept under pytest's 300 s, so this is
    what reports it) fails with every thread's stack, from Python's faulthandler."""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    with subprocess.Popen([*NATLENS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGABRT)
            out, err = p.communicate()
            raise AssertionError(f"natlens {' '.join(args)} still running after {timeout:.0f}s; "
                                 f"stdout: {out[-2000:]}\nstderr: {err[-8000:]}") from None
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check and r.returncode != 0:
        raise AssertionError(f"natlens {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def write_scenario(tmp: Path, data: dict[str, Any]) -> str:
    p = tmp / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def seed(**changes: Any) -> dict[str, Any]:
    d = yaml.safe_load(SEED.read_text())
    d.update(changes)
    return d


def lab_run(scenario: str, *extra: str) -> dict[str, Any]:
    return json.loads(natlens("lab", "run", scenario, "-o", "json", *extra).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def observed(entry: dict[str, Any]) -> dict[str, int]:
    got = {e["endpoint"]: e["observed"] for e in entry["endpoints"] if e["observed"]}
    got.update({u["endpoint"]: u["observed"] for u in entry["undeclared"] if u["observed"]})
    return got


def traffic(lab: dict[str, Any], n: int) -> dict[str, int]:
    r = natlens("lab", "traffic", str(SEED), "--prefix", lab["prefix"], "--from", CLIENT,
                "--service", SERVICE, "--connections", str(n))
    tally = json.loads(r.stdout)
    assert tally["failed"] == 0
    return dict(tally["by_endpoint"])


def start(argv: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*NATLENS, *argv], stdout=subprocess.PIPE, stderr=log.open("w"),
                            text=True, env=dict(os.environ, PYTHONFAULTHANDLER="1"))


def log_until_subscribed(argv: list[str], log: Path, timeout: float = 60,
                         env: dict[str, str] | None = None) -> str:
    """Run an agent (``argv``, the whole command) until it has subscribed to conntrack,
    stop it; its log."""
    p = subprocess.Popen(argv, env=env, stderr=log.open("w"), text=True)
    try:
        wait_for(lambda: "subscribed" in log.read_text(), timeout)
    finally:
        p.terminate()
        p.wait(timeout=60)
    return log.read_text()


def wait_for(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def report_of(db: Path) -> dict[str, Any]:
    """The report over a collector's store (opened read-only, as ``natlens report`` does)."""
    from natlens.collector.report.build import ReportQuery, build_report
    from natlens.collector.store.open import open_store

    store = open_store(str(db), read_only=True)
    try:
        return build_report(store, ReportQuery())
    finally:
        store.close()
