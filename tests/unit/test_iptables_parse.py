from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.rules.iptables import (
    RulesParseError,
    _dnat,
    parse_iptables_save,
    scan_rule,
    tokenize,
)
from natlens.agent.rules.model import DeclaredModel
from natlens.agent.rules.probability import effective_shares, kernel_probability
from natlens.lab import kubeproxy
from natlens.lab.scenario import load_scenario, parse_scenario

FIX = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = FIX.parent.parent


def by_key(model: DeclaredModel) -> dict[tuple[str, str], dict]:
    return {(s["service"], s["kind"]): s for s in model.to_json()["services"]}


def test_seed_chain_names_are_kube_proxys_own_hash() -> None:
    name = "istio-demo/bill-service:http"
    assert kubeproxy.svc_chain(name, "tcp") == "KUBE-SVC-PK4BNTKC2JYVE7B2"
    assert kubeproxy.sep_chain(name, "tcp", "10.244.1.168:80") == "KUBE-SEP-OIO7GYZLNGRLZLYD"
    assert kubeproxy.sep_chain(name, "tcp", "10.244.2.74:80") == "KUBE-SEP-OXS2CP2Q2RMPFLD5"


def test_seed_dump_from_a_real_node() -> None:
    m = parse_iptables_save((FIX / "seed-node2.iptables-save").read_text())
    assert m.to_json()["services"] == [{
        "service": "istio-demo/bill-service:http", "kind": "clusterIP",
        "vip": "10.1.122.241", "port": 9999, "protocol": "tcp", "affinity": "None",
        "policy": "Cluster", "chain": "KUBE-SVC-PK4BNTKC2JYVE7B2", "scheduler": "random",
        "endpoints": [
            {"endpoint": "10.244.1.168:80", "probability": 0.5,
             "chain": "KUBE-SEP-OIO7GYZLNGRLZLYD"},
            {"endpoint": "10.244.2.74:80", "probability": 0.5,
             "chain": "KUBE-SEP-OXS2CP2Q2RMPFLD5"}]}]
    assert m.hash.startswith("sha256:")


def test_kube_proxy_layouts_nodeport_local_affinity_udp_sctp_no_endpoints() -> None:
    m = by_key(parse_iptables_save((FIX / "kube-proxy-mixed.iptables-save").read_text()))
    third = float(kernel_probability(0.33333333349))
    svc3 = m[("ns3/svc3:p80", "clusterIP")]
    assert svc3["affinity"] == "ClientIP"
    assert [e["probability"] for e in svc3["endpoints"]] == [
        third, (1 - third) * 0.5, (1 - third) * 0.5]
    assert m[("ns3/svc3:p80", "nodePort")]["port"] == 3003
    assert m[("ns3/svc3:p80", "nodePort")]["vip"] == "0.0.0.0"
    for kind in ("externalIP", "loadBalancer", "nodePort"):
        s = m[("ns2/svc2:p80", kind)]
        assert s["policy"] == "Local" and s["chain"] == "KUBE-SVL-GNZBNJ2PO5MGZ6GT"
        assert [e["endpoint"] for e in s["endpoints"]] == ["10.180.0.2:80"]
    assert m[("ns2/svc2:p80", "externalIP")]["vip"] == "192.168.99.22"
    assert m[("ns2/svc2:p80", "loadBalancer")]["vip"] == "1.2.3.4"
    assert m[("ns2/svc2:p80", "clusterIP")]["policy"] == "Cluster"
    assert m[("ns4/svc4:p80", "clusterIP")]["endpoints"] == []
    assert m[("ns4/svc4:p80", "nodePort")]["port"] == 3004
    udp = m[("ns5/svc5:dns", "clusterIP")]
    assert udp["protocol"] == "udp"
    assert [e["probability"] for e in udp["endpoints"]] == [0.25, 0.75]
    assert m[("ns6/svc6", "clusterIP")]["protocol"] == "sctp"


def test_ipv6_dump() -> None:
    text = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
-A KUBE-SERVICES -d fd00:10:96::1/128 -p tcp -m comment --comment "ns/s:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -m comment --comment "ns/s:http -> [fd00:10:244::5]:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-A -m comment --comment "ns/s:http -> [fd00:10:244::6]:8080" -j KUBE-SEP-B
-A KUBE-SEP-A -p tcp -m comment --comment ns/s:http -m tcp -j DNAT --to-destination [fd00:10:244::5]:8080
-A KUBE-SEP-B -p tcp -m comment --comment ns/s:http -m tcp -j DNAT --to-destination [fd00:10:244::6]:8080
COMMIT
"""
    (s,) = parse_iptables_save(text).services
    assert s.vip == "fd00:10:96::1"
    assert [e.endpoint for e in s.endpoints] == ["[fd00:10:244::5]:8080", "[fd00:10:244::6]:8080"]


def test_hash_ignores_counters_and_dates_but_not_probabilities() -> None:
    text = (FIX / "seed-node2.iptables-save").read_text()
    a = parse_iptables_save(text)
    b = parse_iptables_save(text.replace("[0:0]", "[7:420]").replace("21:55:15", "03:12:00"))
    c = parse_iptables_save(text.replace("0.50000000000", "0.60000000000"))
    assert a.hash == b.hash != c.hash


@pytest.mark.parametrize("text,needle", [
    ("", "no tables"),
    ("*nat\n:KUBE-SERVICES - [0:0]\n", "truncated"),
    ("*nat\n:KUBE-SERVICES - [0:0]\nthis is not a rule\nCOMMIT\n", "line 3"),
    ("*nat\n-A KUBE-SVC-X -j KUBE-SEP-Y\nCOMMIT\n", "undeclared chain"),
    ("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp --dport 80 "
     "-j KUBE-SVC-MISSING\nCOMMIT\n", "missing chain"),
    ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-A - [0:0]\n"
     "-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp --dport 80 -j KUBE-SVC-A\n"
     "-A KUBE-SVC-A -j KUBE-SEP-A\n-A KUBE-SEP-A -j DNAT --to-destination 10.1.1.1\nCOMMIT\n",
     "no port"),
    ("*nat\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A -m statistic --probability\nCOMMIT\n",
     "has no value"),
    ("*nat\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A --probability 1.7 -j X\nCOMMIT\n", "line 3"),
])
def test_malformed_dumps_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(RulesParseError, match=needle):
        parse_iptables_save(text)


def rule_lines(text: str) -> int:
    return sum(1 for ln in text.splitlines() if ln.strip().startswith(("-A ", "-I ")))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('*:-AJj "KUBE-SVCSEP\n0123456789.COMMIT!/')),
               max_size=300))
def test_fuzzed_dumps_fail_cleanly_or_account_for_every_rule(text: str) -> None:
    try:
        m = parse_iptables_save(text)
    except RulesParseError as e:
        assert str(e) and "\n" not in str(e)  # one line, for the CLI
        return
    # Nothing vanishes: every rule is in a service port's path or counted as ignored.
    assert m.modeled + sum(i.rules for i in m.ignored) == rule_lines(text)
    assert all(s.endpoints == () or abs(sum(e.probability for e in s.endpoints) - 1) < 1e-9
               for s in m.services)


@pytest.mark.parametrize("name", ["seed-node2.iptables-save", "kube-proxy-mixed.iptables-save"])
def test_every_rule_of_a_real_dump_is_modeled_or_counted(name: str) -> None:
    text = (FIX / name).read_text()
    m = parse_iptables_save(text)
    assert m.modeled + sum(i.rules for i in m.ignored) == rule_lines(text)
    assert m.modeled > 0 and m.ignored


RESTORE = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-A1 - [0:0]
:KUBE-SEP-A2 - [0:0]
:KUBE-SVC-OLD - [0:0]
:KUBE-SEP-OLD - [0:0]
-A KUBE-SEP-OLD -j DNAT --to-destination 10.9.9.9:80
-A KUBE-SVC-OLD -j KUBE-SEP-OLD
-A KUBE-SERVICES -m comment --comment "ns/a:http cluster IP" -d 10.96.0.5/32 -p tcp --dport 0 -j KUBE-SVC-A
-A KUBE-SVC-A -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-OLD
-F KUBE-SVC-A
-N KUBE-SEP-A3
-A KUBE-SVC-A -j KUBE-SEP-A2
-I KUBE-SVC-A 1 -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A1
-A KUBE-SEP-A1 -j DNAT --to-destination 10.1.0.1:8080
-A KUBE-SEP-A2 -j DNAT --to-destination 10.1.0.2:8080
-A KUBE-SEP-A3 -j DNAT --to-destination 10.1.0.3:8080
-D KUBE-SEP-A3 1
-X KUBE-SVC-OLD
-X KUBE-SEP-OLD
-X KUBE-SEP-GONE-BEFORE
COMMIT
"""


def test_iptables_restore_input_is_applied_as_the_kernel_would() -> None:
    """What kube-proxy writes (its debug logs): chains flushed, deleted and inserted
    into, in order; a port numbered 0 is a port like any other."""
    m = parse_iptables_save(RESTORE)
    (s,) = m.services
    assert (s.service, s.vip, s.port) == ("ns/a:http", "10.96.0.5", 0)
    assert [(e.endpoint, e.chain) for e in s.endpoints] == [
        ("10.1.0.1:8080", "KUBE-SEP-A1"), ("10.1.0.2:8080", "KUBE-SEP-A2")]
    third = float(kernel_probability(0.3333333333))
    assert [e.probability for e in s.endpoints] == [third, 1 - third]


def test_a_flush_of_every_chain_leaves_no_service() -> None:
    m = parse_iptables_save(RESTORE.replace("COMMIT", "-F\nCOMMIT"))
    assert m.services == () and m.modeled == 0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), override=st.booleans(), data=st.data())
def test_written_rules_parse_back_to_the_kernels_shares(n: int, override: bool,
                                                        data: st.DataObject) -> None:
    probs = (data.draw(st.lists(st.floats(0, 1), min_size=n - 1, max_size=n - 1))
             if override and n > 1 else None)
    sc = parse_scenario({
        "name": "p", "nodes": [{"name": "n", "podCIDR": "10.9.0.0/24", "pods": [
            {"name": f"p{i}", "namespace": "ns", "ip": f"10.9.0.{i + 10}",
             "labels": {"app": "x"}} for i in range(n)]}],
        "services": [{"name": "s", "namespace": "ns", "clusterIP": "10.96.0.10",
                      "selector": {"app": "x"}, "probabilities": list(probs) if probs else None,
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}]})
    (s,) = parse_iptables_save(kubeproxy.render(sc)).services
    written = probs if probs else [1 / (n - i) for i in range(n - 1)]
    expected = effective_shares([kernel_probability(float(f"{p:0.10f}")) for p in written]
                                + [None])
    assert [e.probability for e in s.endpoints] == [float(x) for x in expected]
    assert s.chain == kubeproxy.svc_chain("ns/s:http", "tcp")


def test_tokenize_keeps_quoted_comments_whole() -> None:
    assert tokenize('-A X -m comment --comment "a b \\"c\\"" -j Y') == [
        "-A", "X", "-m", "comment", "--comment", 'a b "c"', "-j", "Y"]


def test_seed_scenario_rules_match_the_real_dump() -> None:
    sc = load_scenario(ROOT / "examples" / "seed-bill-service.yaml")
    ours = parse_iptables_save(kubeproxy.render(sc))
    real = parse_iptables_save((FIX / "seed-node2.iptables-save").read_text())
    assert ours.hash == real.hash


def test_a_declared_empty_selection_chain_is_a_port_without_endpoints() -> None:
    text = (FIX / "seed-node2.iptables-save").read_text()
    flushed = "\n".join(ln for ln in text.splitlines()
                        if not ln.startswith("-A KUBE-SVC-PK4BNTKC2JYVE7B2 "))
    (s,) = parse_iptables_save(flushed).services
    assert s.service == "istio-demo/bill-service:http" and s.endpoints == ()


COMMENTS = st.sampled_from(["", "ns/svc:http", "a --to-destination 9.9.9.9:1",
                            "b -j DNAT", "c -j DNAT --to-destination 8.8.8.8:2",
                            'd \\" -j DNAT --to-destination 7.7.7.7:3'])


@given(st.lists(st.tuples(COMMENTS, st.sampled_from(["DNAT", "KUBE-MARK-MASQ", "ACCEPT"]),
                          st.booleans(), st.sampled_from(["", " -m tcp -p tcp", " -s 1.2.3.4/32"])),
                min_size=1, max_size=4))
def test_the_dnat_fast_path_reads_what_the_general_scan_reads(
        rules: list[tuple[str, str, bool, str]]) -> None:
    """An endpoint chain's DNAT rule, found by the written-out search, is the one the
    general rule scan finds, whatever the comments hold."""
    lines = [f'-A KUBE-SEP-X -m comment --comment "{c}"{opts} -j {target}'
             + (" --to-destination 10.0.0.1:80" if to else "")
             for c, target, to, opts in rules]
    ref = next(((n, r.to_destination) for n, line in enumerate(lines)
                if (r := scan_rule(line, n + 1)).target == "DNAT" and r.to_destination),
               (0, ""))
    assert _dnat(lines, list(range(len(lines)))) == ref


@given(st.text(alphabet=' ab"\\\t-', max_size=30))
def test_tokenize_splits_as_the_token_pattern_does(text: str) -> None:
    """The fast split around one quoted comment reads what the general pattern reads."""
    from natlens.agent.rules.iptables import _TOKEN

    assert tokenize(text) == [b or q.replace('\\"', '"') for q, b in _TOKEN.findall(text)]
