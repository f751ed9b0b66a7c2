"""IPv6 and dual-stack labs: ip6tables and ``ip6 kube-proxy`` rules written as kube-proxy
writes them, read back by the agent, every connection counted in its own family."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, lab_run, observed, write_scenario

pytestmark = pytest.mark.privileged

DUAL = ROOT / "examples" / "dual-stack-web.yaml"
V6 = ROOT / "examples" / "ipv6-dns.yaml"


def by_vip(result: dict[str, object]) -> dict[str, dict[str, object]]:
    return {s["vip"]: s for s in result["report"]["services"]}  # type: ignore[index,attr-defined]


@pytest.mark.parametrize(("mode", "source"), [("iptables", "auto"), ("nftables", "netlink")])
def test_dual_stack_service_is_exact_in_both_families(tmp_path: Path, mode: str,
                                                      source: str) -> None:
    d = yaml.safe_load(DUAL.read_text())
    d.update(name=f"dual-{mode}", proxyMode=mode)
    result = lab_run(write_scenario(tmp_path, d), "--source", source)
    truth = result["ground_truth"]["node-a"]["web/web:http"]
    services = by_vip(result)
    assert set(services) == {"10.96.0.80", "fd00:10:96::50"}
    for vip, family_truth in (
            ("10.96.0.80", {k: v for k, v in truth.items() if not k.startswith("[")}),
            ("fd00:10:96::50", {k: v for k, v in truth.items() if k.startswith("[")})):
        entry = services[vip]
        assert observed(entry) == family_truth and entry["total"] == 300
        assert entry["verdict"] == "consistent" and not entry["undeclared"]
        assert {e["endpoint"]: e["declared"] for e in entry["endpoints"]} == pytest.approx(
            dict.fromkeys(family_truth, 1 / 3), abs=1e-9)
    assert all(e["endpoint"].startswith("[fd00:10:244:") and e["pod"].startswith("web/web-")
               for e in services["fd00:10:96::50"]["endpoints"])
    assert result["report"]["lost"] == [] and result["report"]["unmatched"] == []


def test_ipv6_only_udp_service_is_exact(tmp_path: Path) -> None:
    result = lab_run(str(V6))
    (entry,) = result["report"]["services"]
    assert (entry["vip"], entry["protocol"], entry["total"]) == ("fd00:10:96::a", "udp", 400)
    assert observed(entry) == result["ground_truth"]["node-a"]["kube-system/kube-dns:dns"]
    assert entry["verdict"] == "consistent"


def test_tampered_ipv6_rules_are_caught_in_their_family_only(tmp_path: Path) -> None:
    """A foreign ip6tables DNAT in front of kube-proxy's rules sends every IPv6
    connection to one pod; the IPv4 half stays consistent."""
    d = yaml.safe_load(DUAL.read_text())
    d["name"] = "dual-tamper"
    d["extraRules"] = {"node-a": [
        "-t nat -I PREROUTING 1 -d fd00:10:96::50/128 -p tcp --dport 80 "
        "-j DNAT --to-destination [fd00:10:244:2::15]:8080"]}
    result = lab_run(write_scenario(tmp_path, d), "--source", "netlink")
    services = by_vip(result)
    assert services["fd00:10:96::50"]["verdict"] == "skewed"
    assert observed(services["fd00:10:96::50"]) == {"[fd00:10:244:2::15]:8080": 300}
    assert services["10.96.0.80"]["verdict"] == "consistent"
