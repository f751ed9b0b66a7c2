"""/metrics from a real collector process, parsed by prometheus-client's own parser."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from natlens.agent.rules.live import to_snapshot
from natlens.agent.ship.client import Shipper
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import pack

from .test_grpc import free_port
from .test_retention import MODEL, T0, decision


@pytest.fixture
def collector(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    http = free_port()
    (tmp_path / "TOKEN").write_text("s3cr3t\n")
    extra = [str(tmp_path / a) if a == "TOKEN" else a for a in getattr(request, "param", [])]
    p = subprocess.Popen([sys.executable, "-m", "natlens", "collector", "--insecure", "--db",
                          str(tmp_path / "db"), "--listen", "127.0.0.1:0", "--http",
                          f"127.0.0.1:{http}", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    grpc_port = int(p.stdout.readline().split(":")[-1])
    p.stdout.readline()
    try:
        yield grpc_port, f"http://127.0.0.1:{http}"
    finally:
        p.terminate()
        p.wait(timeout=30)


def send(port: int, batches: list[pb.Batch]) -> None:
    s = Shipper(f"127.0.0.1:{port}")
    s.start()
    for b in batches:
        s.submit(b)
    assert s.drain(20)
    s.stop()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def batches() -> list[pb.Batch]:
    eps = ["10.244.1.5", "10.244.2.6"]
    ds = [decision(T0 + i, eps[i % 3 == 0]) for i in range(90)]
    closes = [decision(T0 + 100 + i, eps[0], event=pb.EVENT_DESTROY, nbytes=50)
              for i in range(4)]
    lost = [pb.LostEvents(time_ns=T0, source=pb.SOURCE_NETLINK, reason="enobufs", count=7)]
    return [pb.Batch(agent_id="a", boot_id="b", seq=1, node="n1", columns=pack(ds[:40]),
                     rules=[to_snapshot(MODEL, T0 - 1)]),
            pb.Batch(agent_id="a", boot_id="b", seq=2, node="n1",
                     columns=pack(ds[40:] + closes),
                     lost=lost)]


def test_metrics_count_what_was_stored(collector: tuple[int, str]) -> None:
    port, url = collector
    send(port, batches())
    send(port, batches()[1:])  # a resend after a restart: stored once, counted once
    m = samples(url)
    # named by the model's service for its VIP, labelled by the source that saw them
    front = (("namespace", "web"), ("node", "n1"), ("port", "http"))
    svc = tuple(sorted((*front, ("endpoint", "10.244.1.5:8080"), ("service", "front"),
                        ("source", "netlink"))))
    other = tuple(sorted((*front, ("endpoint", "10.244.2.6:8080"), ("service", "front"),
                          ("source", "netlink"))))
    assert m[("natlens_decisions_total", svc)] == 60
    assert m[("natlens_decisions_total", other)] == 30
    assert m[("natlens_bytes_total", svc)] == 4 * 100
    assert m[("natlens_lost_events_total", (("node", "n1"), ("reason", "enobufs"),
                                            ("source", "netlink")))] == 7
    assert m[("natlens_batches_total", (("result", "stored"),))] == 2
    assert m[("natlens_batches_total", (("result", "duplicate"),))] == 1
    assert m[("natlens_database_bytes", ())] > 0
    assert ("natlens_ingest_lag_seconds", (("node", "n1"),)) in m


@pytest.mark.parametrize("collector", [["--metrics-max-series", "1"]], indirect=True)
def test_label_sets_are_bounded(collector: tuple[int, str]) -> None:
    port, url = collector
    send(port, batches())
    m = samples(url)
    decisions = {k[1]: v for k, v in m.items() if k[0] == "natlens_decisions_total"}
    assert len(decisions) == 2
    assert decisions[(("endpoint", "other"), ("namespace", ""), ("node", "other"),
                      ("port", ""), ("service", "other"), ("source", "netlink"))] > 0
    assert m[("natlens_metrics_series_overflow_total", ())] > 0


@pytest.mark.parametrize("collector", [["--http-token-file", "TOKEN"]], indirect=True)
def test_http_token_guards_everything_but_the_probes(collector: tuple[int, str]) -> None:
    import urllib.error

    _, url = collector
    for path in ("/", "/metrics", "/api/report"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + path)
        assert e.value.code == 401
    req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": "Bearer s3cr3t"})
    assert urllib.request.urlopen(req).status == 200
    assert urllib.request.urlopen(f"{url}/api/report?token=s3cr3t").status == 200
    assert urllib.request.urlopen(f"{url}/healthz").status == 200


def now_batches(n_first: int, n_second: int) -> list[pb.Batch]:
    """Decisions made just now (inside the judgement window), to web/front:http."""
    import time

    eps = ["10.244.1.5", "10.244.2.6"]
    t = time.time_ns() - 10**9
    ds = [decision(t - i * 1000, eps[0]) for i in range(n_first)] + [
        decision(t - 10**6 - i * 1000, eps[1]) for i in range(n_second)]
    return [pb.Batch(agent_id="a", boot_id="b", seq=1, node="n1", columns=pack(ds),
                     rules=[to_snapshot(MODEL, t - 10**10)])]


def test_judgement_gauges_say_declared_observed_and_the_verdict(
        collector: tuple[int, str]) -> None:
    port, url = collector
    send(port, now_batches(270, 30))  # declared 50/50, observed 90/10
    m = samples(url)
    svc = (("namespace", "web"), ("node", "n1"), ("port", "http"), ("service", "front"))

    def ep(ip: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*svc, ("endpoint", f"{ip}:8080"), ("pod", ""))))

    assert m[("natlens_endpoint_declared_share", ep("10.244.1.5"))] == 0.5
    assert m[("natlens_endpoint_observed_share", ep("10.244.1.5"))] == 0.9
    assert m[("natlens_endpoint_connections", ep("10.244.2.6"))] == 30
    assert m[("natlens_service_verdict", tuple(sorted((*svc, ("verdict", "skewed")))))] == 1
    assert m[("natlens_service_verdict",
              tuple(sorted((*svc, ("verdict", "consistent")))))] == 0
    assert m[("natlens_service_p_value", svc)] < 1e-9
    assert m[("natlens_service_distance", svc)] == pytest.approx(0.4)
    assert m[("natlens_service_connections", svc)] == 300
    assert m[("natlens_metrics_window_seconds", ())] == 900
    assert m[("natlens_metrics_services_dropped_total", ())] == 0


@pytest.mark.parametrize("collector", [["--metrics-services", "other-ns/*"]], indirect=True)
def test_judgement_gauges_only_for_the_selected_services(collector: tuple[int, str]) -> None:
    port, url = collector
    send(port, now_batches(10, 10))
    assert not any(k[0] == "natlens_service_verdict" for k in samples(url))


def test_the_cap_on_service_ports_counts_what_it_leaves_out() -> None:
    from natlens.collector.web.judgement import families

    def entry(service: str, node: str, rules: str = "h1", n: int = 10,
              verdict: str = "consistent") -> dict[str, object]:
        return {"service": service, "node": node, "total": n, "verdict": verdict,
                "rules_version": rules, "tvd": 0.0, "test": {"p_value_holm": 0.5},
                "undeclared": [],
                "endpoints": [{"endpoint": "10.0.0.1:80", "declared": 1.0, "observed": n}]}

    # the report lists versions by hash, not by time: the one in force now is picked
    report = {"services": [entry("a/x:http", "n1", "h2", 5, "skewed"), entry("a/x:http", "n2"),
                           entry("b/y:dns", "n1"), entry("a/x:http", "n1", "h1", 50)]}
    fams, dropped = families(report, ("a/*",), 1, 900, {"n1": "h2", "n2": "h1"})
    assert dropped == 1  # a/x on n2; b/y not selected; n1 once (the rules in force)
    (verdict,) = [f for f in fams if f.name == "natlens_service_verdict"]
    assert {(s.labels["node"], s.labels["verdict"]) for s in verdict.samples
            if s.value == 1} == {("n1", "skewed")}
    fams, _ = families(report, ("a/*",), 1, 900, {})  # none known: most connections
    (verdict,) = [f for f in fams if f.name == "natlens_service_verdict"]
    assert {(s.labels["node"], s.labels["verdict"]) for s in verdict.samples
            if s.value == 1} == {("n1", "consistent")}


@given(st.text(alphabet="abc-1", min_size=1), st.text(alphabet="abc-1.", min_size=1),
       st.text(alphabet="abc-19", min_size=1))
def test_service_names_split_into_kubernetes_labels(ns: str, name: str, port: str) -> None:
    from natlens.collector.web.metrics import split_service

    assert split_service(f"{ns}/{name}:{port}") == (ns, name, port)
    assert split_service(f"10.96.0.{len(name)}:{len(port)}") == (
        "", f"10.96.0.{len(name)}:{len(port)}", "")
