"""kube-proxy's nftables ruleset → declared model, on listings printed by a real `nft`."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.rules.model import DeclaredModel
from natlens.agent.rules.nftables import NftParseError, _tables, _tables_json, parse_nft

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def shares(model: DeclaredModel, service: str, kind: str = "clusterIP") -> dict[str, float]:
    (s,) = [s for s in model.services if s.service == service and s.kind == kind]
    return {e.endpoint: e.probability for e in s.endpoints}


def test_seed_listing_gives_the_seed_model() -> None:
    m = parse_nft((FIX / "seed-node2.nft").read_text())
    assert m.mode == "nftables"
    (s,) = m.services
    assert (s.service, s.kind, s.vip, s.port, s.protocol, s.affinity, s.policy) == (
        "istio-demo/bill-service:http", "clusterIP", "10.1.122.241", 9999, "tcp", "None",
        "Cluster")
    assert {e.endpoint: e.probability for e in s.endpoints} == {
        "10.244.1.168:80": 0.5, "10.244.2.74:80": 0.5}
    assert s.chain == "service-UQ6V3AXA-istio-demo/bill-service/tcp/http"


def test_node_port_affinity_udp_and_unnamed_port() -> None:
    m = parse_nft((FIX / "kube-proxy-mixed.nft").read_text())
    third = {"10.244.1.168:80": 1 / 3, "10.244.2.74:80": 1 / 3, "10.244.2.75:80": 1 / 3}
    assert shares(m, "istio-demo/bill-service:admin") == third
    assert shares(m, "istio-demo/bill-service:admin", "nodePort") == third
    (np,) = [s for s in m.services if s.kind == "nodePort"]
    assert (np.vip, np.port) == ("0.0.0.0", 30900)
    (sticky,) = [s for s in m.services if s.service == "shop/sticky"]
    assert (sticky.protocol, sticky.affinity, sticky.port) == ("udp", "ClientIP", 53)


@pytest.mark.parametrize("fixture", ["kube-proxy-local.nft", "kube-proxy-local.json"])
def test_local_policy_picks_local_endpoints_or_none(fixture: str) -> None:
    """Local external policy as kube-proxy writes it: pod and node-local traffic is
    short-circuited (conditional gotos) to the service chain; outside traffic goes to
    the ``local-…`` chain, or nowhere when the node has no local endpoint."""
    m = parse_nft((FIX / fixture).read_text())
    third = 1 / 3
    assert shares(m, "web/frontend:http") == {
        "10.244.1.20:8080": third, "10.244.1.21:8080": third, "10.244.2.30:8080": third}
    local = {"10.244.1.20:8080": 0.5, "10.244.1.21:8080": 0.5}
    front = [s for s in m.services if s.service == "web/frontend:http" and s.kind != "clusterIP"]
    assert {(s.kind, s.vip, s.port) for s in front} == {
        ("nodePort", "0.0.0.0", 31080), ("externalIP", "192.168.99.20", 80),
        ("externalIP", "203.0.113.10", 80)}
    for s in front:
        assert s.policy == "Local"
        assert {e.endpoint: e.probability for e in s.endpoints} == local
        assert s.chain == "local-PLVUX2VM-web/frontend/tcp/http"
    batch = {s.kind: s for s in m.services if s.service == "web/batch:http"}
    assert shares(m, "web/batch:http") == {"10.244.2.31:8080": 1.0}
    for kind in ("nodePort", "externalIP"):
        assert (batch[kind].policy, batch[kind].endpoints, batch[kind].chain) == ("Local", (), "")


def test_local_policy_text_and_json_agree() -> None:
    text = parse_nft((FIX / "kube-proxy-local.nft").read_text())
    assert parse_nft((FIX / "kube-proxy-local.json").read_text()).hash == text.hash


SLOTS_TEMPLATE = """table ip kube-proxy {{
	set cluster-ips {{
		type ipv4_addr
		elements = {{ 10.0.0.1 }}
	}}
	map service-ips {{
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = {{ 10.0.0.1 . tcp . 80 comment "ns/a:http, with a comma" :
			goto service-AAAAAAAA-ns/a/tcp/http }}
	}}
	chain service-AAAAAAAA-ns/a/tcp/http {{
		numgen random mod {n} vmap {{ {vmap} }}
	}}
{endpoints}}}
"""


def listing(slots: list[int]) -> str:
    """A service whose endpoint i owns slots[i] consecutive numgen values (as ranges)."""
    items, eps, lo = [], [], 0
    for i, k in enumerate(slots):
        rng = f"{lo}" if k == 1 else f"{lo}-{lo + k - 1}"
        items.append(f"{rng} : goto endpoint-BBBBBBBB-ns/a/tcp/http__10.1.1.{i}/80")
        eps.append(f"\tchain endpoint-BBBBBBBB-ns/a/tcp/http__10.1.1.{i}/80 {{\n"
                   f"\t\tmeta l4proto tcp dnat to 10.1.1.{i}:80\n\t}}\n")
        lo += k
    return SLOTS_TEMPLATE.format(n=lo, vmap=", ".join(items), endpoints="".join(eps))


@given(st.lists(st.integers(1, 20), min_size=1, max_size=12))
def test_shares_are_slots_over_n_exactly(slots: list[int]) -> None:
    m = parse_nft(listing(slots))
    got = shares(m, "ns/a:http")
    n = sum(slots)
    assert got == {f"10.1.1.{i}:80": k / n for i, k in enumerate(slots)}
    assert sum(Fraction(k, n) for k in slots) == 1


@pytest.mark.parametrize("text,needle", [
    ("table ip kube-proxy {\n\tchain x {\n", "truncated"),
    ("hello\n", "line 1"),
    (listing([1, 1]).replace("dnat to 10.1.1.1:80", "accept"), "no 'dnat to'"),
    (listing([1, 1]).replace("mod 2", "mod 3"), "maps 2 slots"),
])
def test_malformed_listings_are_refused_with_a_reason(text: str, needle: str) -> None:
    with pytest.raises(NftParseError, match=needle):
        parse_nft(text)


def test_other_tables_are_ignored() -> None:
    text = "table inet filter {\n\tchain input {\n\t\taccept\n\t}\n}\n" + (
        FIX / "seed-node2.nft").read_text()
    assert len(parse_nft(text).services) == 1


def test_json_listing_gives_the_same_model_as_the_text_one() -> None:
    text = parse_nft((FIX / "kube-proxy-affinity.nft").read_text())
    js = parse_nft((FIX / "kube-proxy-affinity.json").read_text())
    assert js == text and js.hash == text.hash
    assert shares(js, "shop/sticky") == {"10.244.1.168:80": 0.5, "10.244.2.74:80": 0.5}
    (sticky,) = [s for s in js.services if s.service == "shop/sticky"]
    assert sticky.affinity == "ClientIP"
    assert {(s.kind, s.port) for s in js.services} == {
        ("clusterIP", 9999), ("clusterIP", 9000), ("nodePort", 30900), ("clusterIP", 53)}


@pytest.mark.parametrize("text", ['{"nftables": 5}', "{not json", '{"other": []}'])
def test_bad_json_is_refused(text: str) -> None:
    with pytest.raises(NftParseError):
        parse_nft(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
    | st.sampled_from(["kube-proxy", "ip", "service-ips", "goto", "concat", "numgen"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["table", "chain", "rule", "map", "set", "family", "name",
                                       "elem", "expr", "vmap", "goto", "target", "dnat",
                                       "concat", "key", "data"]), children, max_size=4),
    max_leaves=20)


@settings(deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["table", "chain", "rule", "map", "set"]),
                                json_values, min_size=1, max_size=1), max_size=6))
def test_json_fuzz_gives_a_model_or_a_parse_error(objects: list[dict[str, object]]) -> None:
    model_or_one_line_error(json.dumps({"nftables": objects}))


@settings(deadline=None)
@given(st.lists(st.sampled_from(
    [*(FIX / "kube-proxy-affinity.nft").read_text().splitlines(), "}", "{", "elements = {",
     "table ip kube-proxy {"]), max_size=40))
def test_text_fuzz_gives_a_model_or_a_parse_error(lines: list[str]) -> None:
    model_or_one_line_error("\n".join(lines))


def model_or_one_line_error(text: str) -> None:
    """A model whose every line is accounted for, or an error of one line."""
    try:
        m = parse_nft(text)
    except NftParseError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert_accounted(m, text)


def assert_accounted(m: DeclaredModel, text: str) -> None:
    """Nothing vanishes: every rule and verdict-map element of kube-proxy's tables is in
    a service port's path or counted as ignored; shares are whole."""
    tables = _tables_json(text) if text.lstrip().startswith("{") else _tables(text)
    assert m.modeled + sum(i.rules for i in m.ignored) == sum(t.rules() for t in tables)
    for s in m.services:
        assert s.endpoints == () or abs(sum(e.probability for e in s.endpoints) - 1) < 1e-9


@pytest.mark.parametrize("name", ["seed-node2.nft", "kube-proxy-mixed.nft",
                                  "kube-proxy-local.nft", "kube-proxy-local.json",
                                  "kube-proxy-affinity.nft", "kube-proxy-affinity.json"])
def test_every_rule_of_a_real_listing_is_modeled_or_counted(name: str) -> None:
    text = (FIX / name).read_text()
    m = parse_nft(text)
    assert_accounted(m, text)
    assert m.modeled > 0 and m.ignored


def test_services_without_endpoints_are_in_the_model() -> None:
    """kube-proxy's no-endpoint-services map: as in iptables mode, the port is there
    with no endpoints (comment names it; without one, VIP:PORT/proto)."""
    text = (FIX / "seed-node2.nft").read_text().replace(
        "\tmap service-ips {", "\tmap no-endpoint-services {\n"
        "\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
        '\t\telements = { 10.1.0.9 . tcp . 80 comment "ns/empty:http" : goto reject-chain,'
        "\n\t\t\t     10.1.0.10 . udp . 0 : drop }\n\t}\n\n\tmap service-ips {")
    m = parse_nft(text)
    got = {(s.service, s.vip, s.port, s.protocol): s.endpoints for s in m.services}
    assert got[("ns/empty:http", "10.1.0.9", 80, "tcp")] == ()
    assert got[("10.1.0.10:0/udp", "10.1.0.10", 0, "udp")] == ()
    assert_accounted(m, text)
