"""``natlens report`` and ``rules parse`` as a user runs them: the summary first, worst
first, --only, --fail-on's exit status, -o yaml, names that match nothing, stdin."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from natlens.collector.store.sqlite import SqliteStore

from .test_retention import EPS, T0, Feed, decision

ROOT = Path(__file__).resolve().parent.parent.parent


def natlens(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "natlens", *args], capture_output=True,
                          text=True, timeout=120, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """n1 skewed (90/10 of a 50/50 service), n2 consistent, n3 one undeclared connection."""
    path = str(tmp_path_factory.mktemp("rep") / "db")
    s = SqliteStore(path)
    Feed(s, "n1").send([decision(T0 + i, EPS[i % 10 == 0]) for i in range(400)], rules=True)
    Feed(s, "n2").send([decision(T0 + i, EPS[i % 2]) for i in range(400)], rules=True)
    Feed(s, "n3").send([decision(T0 + i, EPS[i % 2]) for i in range(400)]
                       + [decision(T0 + 500, "10.244.9.9")], rules=True)
    s.close()
    return path


def test_summary_first_then_worst_first(store: str) -> None:
    r = natlens("report", "--db", store)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("3 service ports judged: 1 skewed, 1 undeclared, 0 insufficient-data, "
                        "1 consistent")
    order = [ln.split(" on ")[1].split()[0] for ln in lines
             if ln.startswith("web/front:http") and " on " in ln]
    assert order == ["n1", "n3", "n2"]
    assert "web/front:http  10.96.0.10:80/tcp  node against node" in r.stdout  # comparisons
    rep = json.loads(natlens("report", "--db", store, "-o", "json").stdout)
    assert rep["summary"] == {"judged": 3, "skewed": 1, "undeclared": 1,
                              "insufficient-data": 0, "consistent": 1}
    n3 = next(e for e in rep["services"] if e["node"] == "n3")
    assert n3["verdict"] == "undeclared" and n3["undeclared"][0]["observed"] == 1


def test_only_and_fail_on(store: str) -> None:
    rep = yaml.safe_load(natlens("report", "--db", store, "--only", "skewed,undeclared",
                                 "-o", "yaml").stdout)
    assert {e["node"] for e in rep["services"]} == {"n1", "n3"} and rep["summary"]["judged"] == 3
    r = natlens("report", "--db", store, "--fail-on", "skewed", "-o", "json")
    assert r.returncode == 3 and "1 entries with verdict skewed (--fail-on)" in r.stderr
    assert json.loads(r.stdout)["services"]  # the report is printed all the same
    assert natlens("report", "--db", store, "--node", "n2", "--fail-on", "skewed").returncode == 0
    r = natlens("report", "--db", store, "--fail-on", "bad")
    assert r.returncode == 2 and "not a verdict" in r.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["--node", "n9"], "no node 'n9' in the store (nodes: n1, n2, n3)"),
    (["--service", "web/frnt"], "did you mean web/front:http?"),
])
def test_names_that_match_nothing_are_errors_that_help(store: str, args: list[str],
                                                       needle: str) -> None:
    r = natlens("report", "--db", store, *args)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert needle in line


def test_service_port_by_number_and_an_empty_window_says_where_the_data_is(store: str) -> None:
    rep = json.loads(natlens("report", "--db", store, "--service", "web/front:80", "-o",
                             "json").stdout)
    assert len(rep["services"]) == 3
    assert natlens("report", "--db", store, "--service", "web/front:81").returncode == 1
    r = natlens("report", "--db", store, "--from", "2020-01-01T00:00:00Z", "--to",
                "2020-01-02T00:00:00Z")
    assert "no decisions in the window; the store has decisions from 2027-" in r.stdout


def test_rules_parse_reads_a_pipe_and_prints_a_table() -> None:
    dump = (ROOT / "tests" / "fixtures" / "kube-proxy-mixed.iptables-save").read_text()
    piped = json.loads(natlens("rules", "parse", stdin=dump).stdout)
    assert piped == json.loads(natlens("rules", "parse", str(
        ROOT / "tests" / "fixtures" / "kube-proxy-mixed.iptables-save")).stdout)
    table = natlens("rules", "parse", "-o", "table", stdin=dump).stdout
    assert "11 service ports" in table and "KUBE-SEP-ZX7GRIZKSNUQ3LAJ" in table


def test_follow_streams_new_decisions_until_interrupted(tmp_path: Path) -> None:
    """Decisions stored after it starts, each once, filtered; not those from before."""
    import signal
    import time

    path = str(tmp_path / "db")
    s = SqliteStore(path)
    feed = Feed(s, "n1")
    now = time.time_ns()
    feed.send([decision(now - 5 * 10**9, EPS[0])], rules=True)  # before: not shown
    p = subprocess.Popen([sys.executable, "-m", "natlens", "query", "decisions", "--db", path,
                          "--follow", "-o", "ndjson", "--endpoint", EPS[1]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        for k in range(3):  # three batches, a second apart, half to each endpoint
            t = time.time_ns()
            feed.send([decision(t + i, EPS[i % 2], client=f"10.244.9.{k}") for i in range(10)])
            time.sleep(1.2)
        time.sleep(2)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        s.close()
    assert p.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 * 5 and {r["endpoint"] for r in rows} == {f"{EPS[1]}:8080"}
    assert len({(r["time_ns"], r["client"]) for r in rows}) == 15  # each once
    assert [r["time_ns"] for r in rows] == sorted(r["time_ns"] for r in rows)


def test_server_answers_as_the_store_does(store: str, tmp_path: Path) -> None:
    """natlens --server URL: report and query through a collector's HTTP API (with its
    token) print what they print from --db."""
    from .test_grpc import free_port

    (tmp_path / "token").write_text("s3cr3t\n")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "natlens", "collector", "--db", store,
                          "--read-only", "--http", f"127.0.0.1:{port}", "--http-token-file",
                          str(tmp_path / "token")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("http")
        server = ["--server", f"http://127.0.0.1:{port}", "--token-file", str(tmp_path / "token")]
        for args in (["report", "-o", "json"],
                     ["report", "--service", "web/front:80", "--node", "n1", "-o", "json"],
                     ["query", "decisions", "--client", "10.244.9.9", "--limit", "50", "-o",
                      "json"],
                     ["query", "rules", "--node", "n2", "--at", "2027-02-01T00:00:00Z", "-o",
                      "json"],
                     ["query", "undeclared", "-o", "json"]):
            local = json.loads(natlens(*args, "--db", store).stdout)
            remote = natlens(*server, *args)
            assert remote.returncode == 0, remote.stderr
            got = json.loads(remote.stdout)
            for out in (local, got):
                if isinstance(out, dict):
                    out.pop("generated_at", None)
            assert got == local, args
        r = natlens(*server, "report", "--fail-on", "skewed")
        assert r.returncode == 3 and r.stdout.startswith("3 service ports judged")
        r = natlens(*server, "report", "--node", "n9")
        assert r.returncode == 1 and "400 no node 'n9'" in r.stderr
        r = natlens("--server", f"http://127.0.0.1:{port}", "report")
        assert r.returncode == 1 and "missing or wrong token" in r.stderr
    finally:
        p.terminate()
        p.wait(timeout=30)
    r = natlens("--server", f"http://127.0.0.1:{port}", "report")
    assert r.returncode == 1 and "cannot reach the collector's HTTP API" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


minutes_st = st.lists(st.tuples(st.integers(0, 30), st.dictionaries(
    st.sampled_from(["a:80", "b:80", "c:80"]), st.integers(0, 80), min_size=1)),
    max_size=60)


@given(minutes_st, st.integers(1, 200))
def test_plot_bins_keep_every_connection_and_break_at_gaps(
        steps: list[tuple[int, dict[str, int]]], min_count: int) -> None:
    from natlens.collector.report.timeline import GAP_S, bins

    t, minutes = 1_800_000_000.0, []
    for step, counts in steps:
        t += 60 * (step + 1)
        minutes.append((t, counts))
    out = bins(minutes, min_count)
    assert sum(sum(b.counts.values()) for b in out) == sum(
        sum(c.values()) for _, c in minutes)
    for a, b in itertools.pairwise(out):
        assert a.end_s <= b.start_s
        # a bin short of min_count ends only at a gap, and the line breaks exactly there
        assert sum(a.counts.values()) >= min_count or b.after_gap
        assert b.after_gap == (b.start_s - (a.end_s - 60) > GAP_S)
