from pathlib import Path

import pytest
import yaml

from natlens.lab.scenario import ScenarioError, load_scenario, parse_scenario

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
