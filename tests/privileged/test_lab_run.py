"""End to end on the real kernel: lab namespaces, kube-proxy rules, conntrack, the
agent and collector as processes over gRPC, SQLite, the report. Counts must equal the
client-side tally exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .helpers import SEED, lab_run, netns_list, observed, seed, write_scenario

pytestmark = pytest.mark.privileged


def by_node(result: dict[str, Any], service: str) -> dict[str, dict[str, Any]]:
    return {s["node"]: s for s in result["report"]["services"] if s["service"] == service}


def test_seed_scenario_exact_and_consistent() -> None:
    before = netns_list()
    result = lab_run(str(SEED), "--source", "netlink")
    (entry,) = result["report"]["services"]
    truth = result["ground_truth"]["k8s-node2"]["istio-demo/bill-service:http"]
    assert sum(truth.values()) == 2000
    assert observed(entry) == truth
    assert entry["verdict"] == "consistent"
    assert [(e["endpoint"], e["declared"], e["chain"], e["pod"]) for e in entry["endpoints"]] == [
        ("10.244.1.168:80", 0.5, "KUBE-SEP-OIO7GYZLNGRLZLYD",
         "istio-demo/bill-service-v1-765cb46975-hmtmd"),
        ("10.244.2.74:80", 0.5, "KUBE-SEP-OXS2CP2Q2RMPFLD5",
         "istio-demo/bill-service-v2-6854775ffc-9n6jv")]
    assert (entry["vip"], entry["port"], entry["node"]) == ("10.1.122.241", 9999, "k8s-node2")
    assert entry["test"]["method"] == "chi-square"
    assert result["report"]["lost"] == []
    assert netns_list() == before


def test_foreign_rule_giving_60_percent_is_skewed(tmp_path: Path) -> None:
    # kube-proxy's rules still declare 50/50; a foreign DNAT in PREROUTING takes 20 %
    # first, so v1 really gets 0.2 + 0.8 * 0.5 = 60 %.
    d = seed(name="tampered", extraRules={"k8s-node2": [
        "-t nat -I PREROUTING 1 -d 10.1.122.241/32 -p tcp --dport 9999 -m statistic "
        "--mode random --probability 0.2 -j DNAT --to-destination 10.244.1.168:80"]})
    result = lab_run(write_scenario(tmp_path, d))
    (entry,) = result["report"]["services"]
    truth = result["ground_truth"]["k8s-node2"]["istio-demo/bill-service:http"]
    assert observed(entry) == truth
    assert [e["declared"] for e in entry["endpoints"]] == [0.5, 0.5]
    assert entry["verdict"] == "skewed"
    assert 0.55 < entry["endpoints"][0]["share"] < 0.65


def test_three_endpoints_on_three_nodes_two_clients_exact_per_node(tmp_path: Path) -> None:
    def pod(name: str, ip: str, body: str | None = None) -> dict[str, Any]:
        p: dict[str, Any] = {"name": name, "namespace": "shop", "ip": ip,
                             "labels": {"app": "cart" if body else "client"}}
        if body:
            p["serve"] = {"port": 8080, "body": body}
        return p

    d = {"name": "three", "clusterCIDR": "10.244.0.0/16",
         "nodes": [
             {"name": "node-a", "podCIDR": "10.244.1.0/24",
              "pods": [pod("client-a", "10.244.1.10"), pod("cart-1", "10.244.1.11", "cart-1")]},
             {"name": "node-b", "podCIDR": "10.244.2.0/24",
              "pods": [pod("client-b", "10.244.2.10"), pod("cart-2", "10.244.2.11", "cart-2")]},
             {"name": "node-c", "podCIDR": "10.244.3.0/24",
              "pods": [pod("cart-3", "10.244.3.11", "cart-3")]}],
         "services": [{"name": "cart", "namespace": "shop", "clusterIP": "10.96.7.7",
                       "selector": {"app": "cart"},
                       "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}],
         "traffic": [{"from": "client-a", "service": "shop/cart:http", "connections": 1500},
                     {"from": "client-b", "service": "shop/cart:http", "connections": 1500}]}
    result = lab_run(write_scenario(tmp_path, d))
    entries = by_node(result, "shop/cart:http")
    assert set(entries) == {"node-a", "node-b"}
    for node, entry in entries.items():
        truth = result["ground_truth"][node]["shop/cart:http"]
        assert sum(truth.values()) == 1500
        assert observed(entry) == truth
        assert entry["verdict"] == "consistent"
        assert [round(e["declared"], 9) for e in entry["endpoints"]] == [0.333333333] * 3


def test_udp_service(tmp_path: Path) -> None:
    d = seed(name="udp")
    for node in d["nodes"]:
        for p in node["pods"]:
            if "serve" in p:
                p["serve"] = {"port": 53, "body": p["serve"]["body"], "protocol": "UDP"}
    d["services"][0]["ports"] = [{"name": "dns", "port": 53, "targetPort": 53,
                                  "protocol": "UDP"}]
    d["traffic"] = [{"from": "front-tomcat-v1-7f8c94c6c8-lfz5m",
                     "service": "istio-demo/bill-service:dns", "connections": 1000}]
    result = lab_run(write_scenario(tmp_path, d))
    (entry,) = result["report"]["services"]
    assert entry["protocol"] == "udp"
    assert observed(entry) == result["ground_truth"]["k8s-node2"]["istio-demo/bill-service:dns"]
    assert entry["total"] == 1000 and entry["verdict"] == "consistent"


CLIENTS = 60


def test_client_ip_affinity_is_judged_on_first_connections(tmp_path: Path) -> None:
    """60 clients, 5 connections each: every client stays on one endpoint (affinity), and
    the 60 first choices are judged against the declared 50/50 (enough to test)."""
    d = seed(name="affinity")
    d["services"][0]["sessionAffinity"] = "ClientIP"
    clients = [f"front-{i}" for i in range(CLIENTS)]
    d["nodes"][0]["pods"] += [{"name": c, "namespace": "istio-demo",
                               "ip": f"10.244.1.{100 + i}", "labels": {"app": "front"}}
                              for i, c in enumerate(clients)]
    d["traffic"] = [{"from": c, "service": "istio-demo/bill-service:http", "connections": 5}
                    for c in clients]
    result = lab_run(write_scenario(tmp_path, d))
    (entry,) = result["report"]["services"]
    assert entry["affinity"] == "ClientIP"
    assert entry["total"] == CLIENTS  # one first connection per client
    assert entry["counted"] == "first connection per client"
    assert entry["test"]["method"] in ("chi-square", "exact-multinomial")
    assert entry["verdict"] == "consistent"
    truth = result["ground_truth"]["k8s-node2"]["istio-demo/bill-service:http"]
    assert sum(truth.values()) == 5 * CLIENTS
    # each client's 5 connections went where its first did: the per-endpoint connection
    # counts are multiples of 5 and add up to the clients' first choices times 5
    assert all(n % 5 == 0 for n in truth.values())
    assert {ep: n // 5 for ep, n in truth.items()} == {
        e["endpoint"]: e["observed"] for e in entry["endpoints"] if e["observed"]}
