"""`natlens lab run --source pcap`: live capture on every interface of each node, SYNs
(and UDP flows) paired before and after DNAT; counts equal the client tally."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import ROOT, SERVICE, lab_run, observed, seed, write_scenario

pytestmark = pytest.mark.privileged


def test_seed_scenario_by_packets(tmp_path: Path) -> None:
    result = lab_run(str(ROOT / "examples" / "seed-bill-service.yaml"), "--source", "pcap")
    (entry,) = result["report"]["services"]
    assert observed(entry) == result["ground_truth"]["k8s-node2"][SERVICE]
    assert entry["total"] == 2000 and not result["report"]["lost"]


def test_three_endpoints_by_packets(tmp_path: Path) -> None:
    d = seed(name="pcap-three")
    d["nodes"][1]["pods"].append({"name": "bill-service-v3", "namespace": "istio-demo",
                                  "ip": "10.244.2.75", "labels": {"service": "bill-service"},
                                  "serve": {"port": 80, "body": "v3"}})
    d["traffic"][0]["connections"] = 1500
    result = lab_run(write_scenario(tmp_path, d), "--source", "pcap")
    (entry,) = result["report"]["services"]
    assert observed(entry) == result["ground_truth"]["k8s-node2"][SERVICE]
    assert len(entry["endpoints"]) == 3 and entry["total"] == 1500


def test_ipv6_udp_flows_by_packets() -> None:
    result = lab_run(str(ROOT / "examples" / "ipv6-dns.yaml"), "--source", "pcap")
    (entry,) = result["report"]["services"]
    assert entry["protocol"] == "udp" and entry["total"] == 400
    assert observed(entry) == result["ground_truth"]["node-a"]["kube-system/kube-dns:dns"]


def test_three_sources_see_every_connection() -> None:
    """conntrack events, the eBPF filter and packets side by side on one node: the
    report counts each connection once, and every one was seen by all three."""
    result = lab_run(str(ROOT / "examples" / "seed-bill-service.yaml"), "--source", "all")
    (entry,) = result["report"]["services"]
    truth = result["ground_truth"]["k8s-node2"][SERVICE]
    assert observed(entry) == truth and entry["total"] == 2000
    assert entry["source"] == "ebpf"
    assert entry["sources"] == {"ebpf": 2000, "netlink": 2000, "pcap": 2000}
    (a,) = result["report"]["agreement"]
    assert a["node"] == "k8s-node2" and a["sources"] == ["ebpf", "netlink", "pcap"]
    assert a["connections"] == a["seen_by_all"] == 2000
    assert a["missed"] == {"ebpf": 0, "netlink": 0, "pcap": 0} and a["disagreed"] == 0
    assert not result["report"]["lost"]
