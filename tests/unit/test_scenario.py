import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.lab.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent.parent
SEED = ROOT / "examples" / "seed-bill-service.yaml"


def seed() -> dict:
    return yaml.safe_load(SEED.read_text())


def test_seed_scenario_is_the_seed_documents() -> None:
    sc = load_scenario(SEED)
    svc, port = sc.service_port("istio-demo/bill-service:http")
    assert (svc.cluster_ip, port.port, port.target_port) == ("10.1.122.241", 9999, 80)
    assert [(p.ip, p.node) for p in sc.endpoints(svc, port)] == [
        ("10.244.1.168", "k8s-node2"), ("10.244.2.74", "k8s-node1")]
    assert sc.cluster_cidr == "10.244.0.0/16"


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d["services"][0].update(clusterIp="1.2.3.4"), "unknown key 'clusterIp'"),
    (lambda d: d["nodes"][0]["pods"][0].update(ip="10.9.9.9"), "not a pod address"),
    (lambda d: d["services"][0]["ports"][0].update(protocol="ICMP"), "TCP or UDP"),
    (lambda d: d["services"][0].update(probabilities=[0.2, 0.3]), "needs 1 values"),
    (lambda d: d["traffic"][0].update({"from": "nobody"}), "no pod named"),
    (lambda d: d.update(proxyMode="ipvs"), "not supported"),
    (lambda d: d["nodes"][1]["pods"][0]["serve"].update(body="this is bill-service-v1"),
     "same body"),
])
def test_bad_scenarios_say_where(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    d = seed()
    mutate(d)
    with pytest.raises(ScenarioError, match=needle):
        parse_scenario(d, "seed.yaml")


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(tmp_path / "x.yaml")
    with pytest.raises(ScenarioError, match="No such file"):
        load_scenario(tmp_path / "missing.yaml")


DUAL = ROOT / "examples" / "dual-stack-web.yaml"


def dual() -> dict:
    return yaml.safe_load(DUAL.read_text())


def test_dual_stack_scenario_has_both_families() -> None:
    sc = load_scenario(DUAL)
    svc, port = sc.service_port("web/web:http")
    assert sc.families == (4, 6) and svc.families == (4, 6)
    assert sc.cluster_cidrs == {4: "10.244.0.0/22", 6: "fd00:10:244::/62"}
    assert [p.ip_of(6) for p in sc.endpoints(svc, port, 6)] == [
        "fd00:10:244:1::14", "fd00:10:244:2::14", "fd00:10:244:2::15"]
    assert sc.traffic[1].family == 6


def test_lab_rules_for_ipv6_parse_back_to_the_declared_shares() -> None:
    from natlens.agent.rules.iptables import parse_iptables_save
    from natlens.lab import kubeproxy

    sc = load_scenario(DUAL)
    v6 = parse_iptables_save(kubeproxy.render(sc, 6))
    (s,) = v6.services
    assert (s.vip, s.port) == ("fd00:10:96::50", 80)
    assert {e.endpoint: e.probability for e in s.endpoints} == pytest.approx({
        "[fd00:10:244:1::14]:8080": 1 / 3, "[fd00:10:244:2::14]:8080": 1 / 3,
        "[fd00:10:244:2::15]:8080": 1 / 3}, abs=1e-9)
    assert parse_iptables_save(kubeproxy.render(sc, 4)).services[0].vip == "10.96.0.80"


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["nodes"][0].update(podCIDR="10.9.0.0/24"), "either 'podCIDR' or 'podCIDRs'"),
    (lambda d: d["nodes"][0].update(podCIDRs=["10.1.0.0/24", "10.2.0.0/24"]),
     "one network per family"),
    (lambda d: d["nodes"][0]["pods"][0].update(ip="10.244.1.10"), "either 'ip' or 'ips'"),
    (lambda d: d["nodes"][0]["pods"][0].update(ips=["fd00:10:244:9::1"]), "not a pod address"),
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.1", "10.96.0.2"]),
     "one address per family"),
    (lambda d: d["traffic"][0].update(family="IPv5"), "IPv4 or IPv6"),
    (lambda d: d["services"][0].update(clusterIPs=["10.96.0.80"]), "no IPv6 cluster IP"),
])
def test_bad_dual_stack_scenarios_say_where(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    d = dual()
    mutate(d)
    with pytest.raises(ScenarioError, match=needle):
        parse_scenario(d, "dual.yaml")


def test_ipv6_pod_on_an_ipv4_only_node_is_refused() -> None:
    d = seed()
    d["nodes"][0]["pods"][0]["ip"] = "fd00::5"
    with pytest.raises(ScenarioError, match="has no IPv6 podCIDR"):
        parse_scenario(d, "seed.yaml")


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
    | st.sampled_from(["10.244.1.5", "fd00::1", "10.244.1.0/24", "TCP", "UDP", "IPv6"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "ip", "ips", "podCIDR", "podCIDRs", "pods", "port",
                         "clusterIP", "clusterIPs", "ports", "selector", "serve", "body",
                         "protocol", "labels", "namespace", "from", "service",
                         "connections", "family"]), inner, max_size=5),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={
    "nodes": _VALUES, "services": _VALUES, "traffic": _VALUES, "proxyMode": _VALUES,
    "extraRules": _VALUES, "clusterCIDR": _VALUES}))
def test_fuzzed_scenarios_parse_or_say_where(data: dict) -> None:  # type: ignore[type-arg]
    try:
        sc = parse_scenario(data, "fuzz.yaml")
    except ScenarioError as e:
        assert str(e).startswith("fuzz.yaml") and "\n" not in str(e)
        return
    assert_well_formed(sc)


def assert_well_formed(sc: Scenario) -> None:
    """What an accepted scenario promises: pods inside their node's podCIDR, unique
    addresses, traffic from pods that exist to service ports that exist."""
    addrs = [ip for p in sc.pods for ip in p.ips]
    assert len(addrs) == len(set(addrs))
    for node in sc.nodes:
        nets = [ipaddress.ip_network(c) for c in node.pod_cidrs]
        for p in node.pods:
            assert all(any(ipaddress.ip_address(ip) in n for n in nets) for ip in p.ips)
    for t in sc.traffic:
        sc.pod(t.source)
        sc.service_port(t.service)


def test_mutated_seed_yaml_never_crashes() -> None:
    text = SEED.read_text()
    for i in range(0, len(text), 7):
        for junk in ("", ":", "- ", "{", "]", "\t"):
            try:
                sc = parse_scenario(yaml.safe_load(text[:i] + junk + text[i + 1:]), "m.yaml")
            except (ScenarioError, yaml.YAMLError):
                continue
            assert_well_formed(sc)
