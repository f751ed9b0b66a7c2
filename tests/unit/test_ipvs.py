"""IPVS: ipvsadm listings → declared model, and rr/wrr judged as a rotation."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natlens.agent.rules.ipvs import IpvsParseError, parse_ipvs
from natlens.agent.rules.live import to_snapshot
from natlens.collector.analyze.rotation import check_rotation
from natlens.collector.report.build import ReportQuery, build_report
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def by_service(text: str) -> dict[str, tuple[str, str, str, dict[str, float]]]:
    return {s.service: (s.kind, s.affinity, s.scheduler,
                        {e.endpoint: e.probability for e in s.endpoints})
            for s in parse_ipvs(text).services}


def test_list_and_save_formats_give_the_same_exact_model() -> None:
    listing = parse_ipvs((FIX / "ipvs-node.ipvsadm").read_text())
    saved = parse_ipvs((FIX / "ipvs-node.ipvsadm-save").read_text())
    assert listing == saved and listing.mode == "ipvs"
    m = by_service((FIX / "ipvs-node.ipvsadm").read_text())
    assert m["10.96.0.1:443/tcp"] == ("clusterIP", "ClientIP", "rr", {"172.18.0.2:6443": 1.0})
    assert m["10.96.0.10:53/udp"] == ("clusterIP", "None", "rr",
                                      {"10.244.0.2:53": 0.5, "10.244.0.3:53": 0.5})
    # wrr: weight over the sum; weight 0 (a terminating endpoint) gets nothing
    assert m["10.96.100.5:80/tcp"][3] == {"10.244.1.5:8080": 0.75, "10.244.2.6:8080": 0.25,
                                          "10.244.2.7:8080": 0.0}
    assert m["10.96.100.9:80/tcp"][2] == "lc"
    assert m["10.96.200.1:80/tcp"][3] == {}
    assert m["192.168.49.2:30080/tcp"][0] == "nodePort"
    assert m["[fd00:10:96::a]:53/tcp"][3] == {"[fd00:10:244::2]:53": 0.5,
                                              "[fd00:10:244::3]:53": 0.5}
    assert len(m) == 8  # the fwmark service has no VIP to match and is left out


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty input"),
    ("TCP  kubernetes.default.svc.cluster.local:https rr\n", "a name, not an address"),
    ("  -> 10.0.0.1:80 Masq 1 0 0\n", "real server before any virtual service"),
    ("TCP  10.0.0.1:80 roundrobin\n", "unknown scheduler"),
    ("TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Masq x 0 0\n", "weight"),
    ("TCP  10.0.0.1 rr\n", "not ADDRESS:PORT"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1\n", "no -A line added"),
    ("-A -t 10.0.0.1:80 -s\n", "has no value"),
    ("*nat\n:PREROUTING ACCEPT\nCOMMIT\n", "not ipvsadm -Ln output"),
])
def test_bad_listings_are_refused_with_the_line(text: str, needle: str) -> None:
    with pytest.raises(IpvsParseError, match=needle):
        parse_ipvs(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    "TCP  10.0.0.1:80 rr", "UDP  [fd00::1]:53 wrr persistent 60", "  -> 10.0.0.2:80 Masq 2 0 0",
    "  -> [fd00::2]:53 Masq 0 0 0", "-A -t 10.0.0.1:80 -s rr", "-a -t 10.0.0.1:80 -r 1.2.3.4:5",
    "FWM  7 rr", "garbage", "TCP", "  ->", "-A -u", "Prot LocalAddress:Port Scheduler Flags",
]) | st.text(max_size=40), max_size=12))
def test_fuzzed_listings_give_a_model_or_a_parse_error(lines: list[str]) -> None:
    with contextlib.suppress(IpvsParseError):
        m = parse_ipvs("\n".join(lines))
        for s in m.services:
            total = sum(e.probability for e in s.endpoints)
            assert total == 0 or math.isclose(total, 1.0)


def ipvs_wrr(weights: list[int], n: int) -> list[int]:
    """The kernel's ip_vs_wrr.c choice sequence (interleaved WRR), for reference."""
    g = math.gcd(*[w for w in weights if w > 0])
    mw = max(weights)
    i, cw, out = -1, 0, []
    while len(out) < n:
        i = (i + 1) % len(weights)
        if i == 0:
            cw -= g
            if cw <= 0:
                cw = mw
        if weights[i] >= cw:
            out.append(i)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=2, max_size=5), st.integers(0, 200),
       st.integers(1, 400))
def test_every_window_of_a_real_rotation_is_within_the_bound(weights: list[int], start: int,
                                                             n: int) -> None:
    seq = ipvs_wrr(weights, start + n)[start:]
    counts = Counter(seq)
    shares = [w / sum(weights) for w in weights]
    assert check_rotation([counts[i] for i in range(len(weights))], shares).consistent


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6), st.integers(0, 50), st.integers(1, 300))
def test_rr_is_held_to_one_connection(k: int, start: int, n: int) -> None:
    seq = [(start + j) % k for j in range(n)]
    counts = [seq.count(i) for i in range(k)]
    assert check_rotation(counts, [1 / k] * k).consistent
    counts[0] += 2  # two connections more than any rotation gives (one taken elsewhere)
    counts[1] -= min(counts[1], 2)
    if sum(counts) >= k:
        assert not check_rotation(counts, [1 / k] * k).consistent


def _report_for(tmp_path: Path, listing: str, endpoints: list[str]) -> dict[str, object]:
    model = parse_ipvs(listing)
    s = SqliteStore(str(tmp_path / "db"))
    snap = to_snapshot(model, time_ns=1)
    vip = model.services[0].vip
    decisions = [DecisionRow(10 + i, "tcp", "10.244.9.9", 20000 + i, vip, 80,
                             ep.rsplit(":", 1)[0], 8080, ct_id=i + 1,
                             source=pb.SOURCE_NETLINK, event=pb.EVENT_NEW)
                 for i, ep in enumerate(endpoints)]
    s.ingest(pb.Batch(agent_id="a", boot_id="b", seq=1, node="n1", columns=pack(decisions),
                      rules=[snap]))
    try:
        return build_report(s, ReportQuery())
    finally:
        s.close()


WRR = "TCP  10.96.100.5:80 wrr\n  -> 10.244.1.5:8080 Masq 3 0 0\n  -> 10.244.2.6:8080 Masq 1 0 0\n"


def test_report_judges_a_true_wrr_rotation_consistent(tmp_path: Path) -> None:
    eps = ["10.244.1.5:8080", "10.244.2.6:8080"]
    rep = _report_for(tmp_path, WRR, [eps[i] for i in ipvs_wrr([3, 1], 401)])
    (svc,) = rep["services"]  # type: ignore[misc]
    assert (svc["scheduler"], svc["verdict"], svc["test"]["method"]) == (
        "wrr", "consistent", "rotation")
    assert svc["test"]["p_value"] is None


def test_report_judges_runs_no_rotation_makes_skewed(tmp_path: Path) -> None:
    # 75/25 overall, but in long runs as a random draw or a broken scheduler gives them:
    # 30 in a row to one endpoint is more than wrr 3:1 ever sends (bound 6 from 22.5).
    seq = ["10.244.1.5:8080"] * 30 + ["10.244.2.6:8080"] * 10
    rep = _report_for(tmp_path, WRR, seq[:30])
    (svc,) = rep["services"]  # type: ignore[misc]
    assert svc["verdict"] == "skewed" and svc["test"]["statistic"] > 1


def test_load_based_schedulers_are_shown_not_tested(tmp_path: Path) -> None:
    lc = WRR.replace(" wrr", " lc")
    rep = _report_for(tmp_path, lc, ["10.244.1.5:8080"] * 50)
    (svc,) = rep["services"]  # type: ignore[misc]
    assert svc["verdict"] == "insufficient-data" and svc["test"] is None
    assert "not at random" in svc["reasons"][0]
