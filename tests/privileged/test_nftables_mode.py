"""kube-proxy's nftables mode in the lab: the rules its proxier writes, read back by
the agent, counted exactly; a foreign nftables rule that steers traffic is caught."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    CLIENT,
    SERVICE,
    free_port,
    lab_run,
    natlens,
    observed,
    report_of,
    seed,
    start,
    wait_for,
    write_scenario,
)

pytestmark = pytest.mark.privileged


def test_nftables_lab_run_is_exact_and_consistent(tmp_path: Path) -> None:
    d = seed(name="nft", proxyMode="nftables")
    d["nodes"][1]["pods"].append({"name": "bill-service-v3", "namespace": "istio-demo",
                                  "ip": "10.244.2.75", "labels": {"service": "bill-service"},
                                  "serve": {"port": 80, "body": "v3"}})
    d["traffic"][0]["connections"] = 1500
    result = lab_run(write_scenario(tmp_path, d))
    (entry,) = result["report"]["services"]
    assert observed(entry) == result["ground_truth"]["k8s-node2"][SERVICE]
    assert entry["total"] == 1500 and entry["verdict"] == "consistent"
    assert {e["endpoint"]: e["declared"] for e in entry["endpoints"]} == pytest.approx({
        "10.244.1.168:80": 1 / 3, "10.244.2.74:80": 1 / 3, "10.244.2.75:80": 1 / 3}, abs=1e-11)
    assert entry["chain"].startswith("service-") and entry["chain"].endswith(
        "-istio-demo/bill-service/tcp/http")


@pytest.fixture
def nft_lab(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    path = write_scenario(tmp_path, seed(name="nft-tamper", proxyMode="nftables"))
    info = json.loads(natlens("lab", "up", path).stdout)
    try:
        yield path, info
    finally:
        natlens("lab", "down", path, "--prefix", info["prefix"])


def test_a_foreign_nftables_rule_is_caught_as_skewed(
        nft_lab: tuple[str, dict[str, Any]], tmp_path: Path, bpffs: Path) -> None:
    path, info = nft_lab
    node = info["nodes"]["k8s-node2"]
    # Before kube-proxy's dstnat chain: one connection in five goes to v1 whatever the
    # rules say, so v1 gets 0.2 + 0.8 × 0.5 = 60 %.
    subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"], check=True, text=True,
                   input="table ip tamper {\n chain pre {\n"
                         "  type nat hook prerouting priority -110; policy accept;\n"
                         "  ip daddr 10.1.122.241 tcp dport 9999 numgen random mod 5 == 0 "
                         "dnat to 10.244.1.168:80\n }\n}\n")
    db, port = tmp_path / "natlens.db", free_port()
    collector = start(["collector", "--insecure", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
                      tmp_path / "collector.log")
    log = tmp_path / "agent.log"
    agent = start(["agent", "--insecure", "--collector", f"127.0.0.1:{port}", "--node", "k8s-node2",
                   "--netns", node, "--source", "ebpf", "--pin-root", str(bpffs)], log)
    try:
        wait_for(lambda: "subscribed" in log.read_text(), 60)
        r = natlens("lab", "traffic", path, "--prefix", info["prefix"], "--from", CLIENT,
                    "--service", SERVICE, "--connections", "2000")
    finally:
        agent.terminate()
        assert agent.wait(timeout=60) == 0, log.read_text()
        collector.terminate()
        collector.wait(timeout=30)
    tally = json.loads(r.stdout)["by_endpoint"]
    rep = report_of(db)
    (entry,) = rep["services"]
    assert "rules: nftables mode" in log.read_text()
    assert observed(entry) == tally
    assert {e["endpoint"]: e["declared"] for e in entry["endpoints"]} == {
        "10.244.1.168:80": 0.5, "10.244.2.74:80": 0.5}
    assert entry["verdict"] == "skewed"


BOTH_MODES = {
    "name": "both-modes",
    "nodes": [{"name": "n1", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"], "pods": [
        {"name": f"web-{i}", "namespace": "web", "ips": [f"10.244.1.{20 + i}",
                                                          f"fd00:10:244:1::{20 + i:x}"],
         "labels": {"app": "web"}, "serve": {"port": 8080, "body": f"web-{i}"}}
        for i in range(3)] + [
        {"name": "dns-0", "namespace": "kube", "ip": "10.244.1.53", "labels": {"app": "dns"},
         "serve": {"port": 53, "body": "dns-0", "protocol": "UDP"}}]}],
    "services": [
        {"name": "web", "namespace": "web", "clusterIPs": ["10.96.0.80", "fd00:10:96::50"],
         "selector": {"app": "web"}, "ports": [
             {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]},
        {"name": "sticky", "namespace": "web", "clusterIP": "10.96.0.81",
         "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
         "ports": [{"name": "http", "port": 8081, "targetPort": 8080}]},
        {"name": "empty", "namespace": "web", "clusterIP": "10.96.0.82",
         "selector": {"app": "nothing"},
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30082}]},
        {"name": "dns", "namespace": "kube", "clusterIP": "10.96.0.10",
         "selector": {"app": "dns"},
         "ports": [{"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}]}],
}


def live_model(tmp_path: Path, mode: str) -> dict[tuple[Any, ...], Any]:
    """The node's rules as the agent reads them, built by the lab in ``mode``: each
    service port with its endpoints and their shares (chain names differ by mode)."""
    path = write_scenario(tmp_path, {**BOTH_MODES, "name": f"both-{mode}", "proxyMode": mode})
    info = json.loads(natlens("lab", "up", path).stdout)
    try:
        model = json.loads(natlens("rules", "parse", "--netns", info["nodes"]["n1"]).stdout)
    finally:
        natlens("lab", "down", path, "--prefix", info["prefix"])
    assert model["mode"] == mode
    return {(s["service"], s["kind"], s["vip"], s["port"], s["protocol"]): (
        s["affinity"], s["policy"], sorted((e["endpoint"], round(e["probability"], 8))
                                           for e in s["endpoints"]))
        for s in model["services"]}


def test_the_same_cluster_gives_the_same_model_in_both_modes(tmp_path: Path) -> None:
    ipt, nft = live_model(tmp_path, "iptables"), live_model(tmp_path, "nftables")
    assert ipt == nft
    # a service with no endpoints is in both
    assert nft[("web/empty:http", "clusterIP", "10.96.0.82", 80, "tcp")][2] == []
    assert nft[("web/empty:http", "nodePort", "0.0.0.0", 30082, "tcp")][2] == []
    assert nft[("web/sticky:http", "clusterIP", "10.96.0.81", 8081, "tcp")][0] == "ClientIP"
    assert len(nft[("web/web:http", "clusterIP", "fd00:10:96::50", 80, "tcp")][2]) == 3
