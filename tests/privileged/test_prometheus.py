"""A real Prometheus server scraping a lab's collector and agent with the shipped alerting
rules: NatlensServiceSkewed fires on a tampered node and stays silent on a fair one,
NatlensEventsLost fires when the agent overflows, and every panel of the shipped Grafana
dashboard returns series."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.require import tool

from .helpers import ROOT, SEED, free_port, natlens, seed, start, wait_for, write_scenario

pytestmark = pytest.mark.privileged
CLIENT = "front-tomcat-v1-7f8c94c6c8-lfz5m"
SERVICE = "istio-demo/bill-service:http"


class Prometheus:
    """Scrapes every second and evaluates the shipped rules every second; ``for:`` is
    dropped so an alert fires on its first true evaluation (the expressions are the
    shipped ones)."""

    def __init__(self, tmp: Path, collector: int, agent: int) -> None:
        rules = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())["spec"]
        for g in rules["groups"]:
            for r in g["rules"]:
                r.pop("for", None)
        (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yaml")],
            "scrape_configs": [
                {"job_name": "natlens-collector",
                 "static_configs": [{"targets": [f"127.0.0.1:{collector}"]}]},
                {"job_name": "natlens-agent",
                 "static_configs": [{"targets": [f"127.0.0.1:{agent}"]}]}]}))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [tool("prometheus", "prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"))
        wait_for(self.ready, 30)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def firing(self, alert: str) -> list[dict[str, str]]:
        return [r["metric"] for r in self.query(
            f'ALERTS{{alertname="{alert}", alertstate="firing"}}')]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def watched_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A lab (the scenario ``request.param`` names), its collector with /metrics, an agent
    on k8s-node2 with its own /metrics (tampered: a 4 KiB receive buffer, to lose events
    on purpose), and Prometheus."""
    scenario = str(SEED)
    if request.param == "tampered":
        # kube-proxy's rules declare 50/50; a foreign DNAT ahead of them takes 20 % first,
        # and another sends 10 % to a port no rule declares. Those connections fail: the
        # RST ends their entries at once, so no table dump recovers them, and with the
        # 4 KiB buffer only about 100 NEW events get through; at 3 % none of those was
        # undeclared in about one run in twenty (CI saw it)
        scenario = write_scenario(tmp_path, seed(name="tampered", extraRules={"k8s-node2": [
            "-t nat -I PREROUTING 1 -d 10.1.122.241/32 -p tcp --dport 9999 -m statistic "
            "--mode random --probability 0.2 -j DNAT --to-destination 10.244.1.168:80",
            "-t nat -I PREROUTING 1 -d 10.1.122.241/32 -p tcp --dport 9999 -m statistic "
            "--mode random --probability 0.1 -j DNAT --to-destination 10.244.1.168:8080"]}))
    info = json.loads(natlens("lab", "up", scenario).stdout)
    procs: list[subprocess.Popen[str]] = []
    prom: Prometheus | None = None
    try:
        grpc, web, health = free_port(), free_port(), free_port()
        procs.append(start(["collector", "--insecure", "--db", str(tmp_path / "db"), "--listen",
                            f"127.0.0.1:{grpc}", "--http", f"127.0.0.1:{web}"],
                           tmp_path / "collector.log"))
        agent = start(["agent", "--insecure", "--collector", f"127.0.0.1:{grpc}", "--node",
                       "k8s-node2", "--netns", info["nodes"]["k8s-node2"], "--source",
                       "netlink", "--health-listen", f"127.0.0.1:{health}",
                       *(["--rcvbuf", "4096"] if request.param == "tampered" else [])],
                      tmp_path / "agent.log")
        procs.append(agent)
        wait_for(lambda: " mode, " in (tmp_path / "agent.log").read_text(), 30)
        prom = Prometheus(tmp_path, web, health)
        yield {"prom": prom, "scenario": scenario, "prefix": info["prefix"], "agent": agent,
               "log": tmp_path / "agent.log"}
    finally:
        if prom is not None:
            prom.stop()
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
            p.terminate()
            p.wait(timeout=60)
        natlens("lab", "down", scenario, "--prefix", info["prefix"])


def traffic(lab: dict[str, Any], n: int) -> None:
    natlens("lab", "traffic", lab["scenario"], "--prefix", lab["prefix"], "--from", CLIENT,
            "--service", SERVICE, "--connections", str(n))


@pytest.mark.parametrize("watched_lab", ["tampered"], indirect=True)
def test_skew_and_losses_fire_and_every_dashboard_panel_has_series(
        watched_lab: dict[str, Any]) -> None:
    prom: Prometheus = watched_lab["prom"]
    os.kill(watched_lab["agent"].pid, signal.SIGSTOP)  # 4 KiB fill up: an overflow
    traffic(watched_lab, 400)
    os.kill(watched_lab["agent"].pid, signal.SIGCONT)
    wait_for(lambda: "recovered" in watched_lab["log"].read_text(), 30)
    traffic(watched_lab, 1200)
    wait_for(lambda: prom.firing("NatlensServiceSkewed"), 60)
    (alert,) = prom.firing("NatlensServiceSkewed")
    assert {k: alert[k] for k in ("namespace", "service", "port", "node")} == {
        "namespace": "istio-demo", "service": "bill-service", "port": "http",
        "node": "k8s-node2"}
    wait_for(lambda: prom.firing("NatlensEventsLost"), 60)
    assert prom.firing("NatlensEventsLost")[0]["reason"] == "enobufs"
    wait_for(lambda: prom.firing("NatlensUndeclaredEndpoint"), 60)
    assert prom.firing("NatlensUndeclaredEndpoint")[0]["endpoint"] == "10.244.1.168:8080"
    assert not prom.firing("NatlensAgentDown")
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 10
    for title, expr in targets:
        for var, value in (("$namespace", ".*"), ("$service", ".*"), ("$node", ".*"),
                           ("$__rate_interval", "1m")):
            expr = expr.replace(var, value)
        try:  # a rate needs two scrapes of the series
            wait_for(lambda e=expr: bool(prom.query(e)), 30)
        except AssertionError:
            raise AssertionError(f"panel {title!r}: no series for {expr}") from None


@pytest.mark.parametrize("watched_lab", ["fair"], indirect=True)
def test_a_fair_service_raises_nothing(watched_lab: dict[str, Any]) -> None:
    prom: Prometheus = watched_lab["prom"]
    traffic(watched_lab, 1200)
    consistent = ('natlens_service_verdict{namespace="istio-demo", service="bill-service", '
                  'verdict="consistent"} == 1')
    wait_for(lambda: prom.query(consistent), 60)
    time.sleep(5)  # five more evaluations
    assert prom.query(consistent)
    assert not prom.query('ALERTS{alertname=~"Natlens.*"}')
