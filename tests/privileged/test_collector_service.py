"""The collector as a service, on a database filled by a real lab run: post-incident
queries with exact row counts, the dashboard in headless Chromium, bad input."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.pgserver import PgServer

from .helpers import SEED, SERVICE, free_port, natlens

pytestmark = pytest.mark.privileged

CLIENT_IP = "10.244.1.169"
V1, V2 = "10.244.1.168:80", "10.244.2.74:80"


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    db = tmp_path_factory.mktemp("svc") / "seed.db"
    r = natlens("lab", "run", str(SEED), "--source", "netlink", "--db", str(db), "-o", "json")
    truth = json.loads(r.stdout)["ground_truth"]["k8s-node2"][SERVICE]
    assert sum(truth.values()) == 2000
    return db, truth


def query(db: Path, *args: str) -> Any:
    return json.loads(natlens("query", *args, "--db", str(db), "-o", "json").stdout)


def test_decision_queries_have_exact_row_counts(lab_db: tuple[Path, dict[str, int]]) -> None:
    db, truth = lab_db
    everything = query(db, "decisions", "--client", CLIENT_IP)
    assert len(everything) == 2000
    assert {r["service"] for r in everything} == {SERVICE}
    assert {r["node"] for r in everything} == {"k8s-node2"}
    for ep, n in truth.items():
        rows = query(db, "decisions", "--endpoint", ep)
        assert len(rows) == n
        assert {r["pod"] for r in rows} == {
            "istio-demo/bill-service-v1-765cb46975-hmtmd" if ep == V1
            else "istio-demo/bill-service-v2-6854775ffc-9n6jv"}
    assert len(query(db, "decisions", "--endpoint", V1.split(":")[0])) == truth[V1]
    assert len(query(db, "decisions", "--service", "istio-demo/bill-service")) == 2000
    assert query(db, "decisions", "--node", "k8s-node1") == []
    # times print to the millisecond: a window to the last one's millisecond + 1 ms
    first = everything[0]["time"]
    last_ms = everything[-1]["time_ns"] // 10**6 + 1
    last = datetime.fromtimestamp(last_ms / 1000, UTC).isoformat(timespec="milliseconds")
    assert len(query(db, "decisions", "--from", first, "--to", last)) == 2000
    middle = everything[1000]["time_ns"] // 1000 * 1000  # RFC 3339 to the microsecond
    start = datetime.fromtimestamp(middle // 10**9, UTC).replace(
        microsecond=middle % 10**9 // 1000).isoformat()
    assert len(query(db, "decisions", "--from", start)) == sum(
        1 for r in everything if r["time_ns"] >= middle)
    r = natlens("query", "decisions", "--db", str(db), "--limit", "5", "-o", "json")
    assert len(json.loads(r.stdout)) == 5 and "showing the first 5" in r.stderr


def test_rules_in_force_and_undeclared(lab_db: tuple[Path, dict[str, int]]) -> None:
    db, _ = lab_db
    model = query(db, "rules", "--node", "k8s-node2")
    (svc,) = model["services"]
    assert svc["service"] == SERVICE and {e["endpoint"]: e["probability"]
                                          for e in svc["endpoints"]} == {V1: 0.5, V2: 0.5}
    assert query(db, "undeclared") == []
    r = natlens("query", "rules", "--db", str(db), "--node", "k8s-node2", "--at",
                "2001-01-01T00:00:00Z", check=False)
    assert r.returncode == 1 and "first rules at" in r.stderr


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["report", "--since", "yesterday"], 2, "not a duration"),
    (["report", "--service", "nope/nothing"], 1, "no service 'nope/nothing'"),
    (["query", "decisions", "--service", "nope/nothing"], 1, "no service"),
    (["query", "decisions", "--endpoint", "not-an-ip"], 1, "not IP or IP:PORT"),
    (["query", "rules", "--node", "k8s-node9"], 1, "no rules stored for node 'k8s-node9'"),
    (["query", "decisions", "--from", "last tuesday"], 2, "RFC 3339"),
    (["query", "decisions", "--since", "1h", "--from", "2026-01-01T00:00:00Z"], 2,
     "give one"),
])
def test_bad_input_is_one_line(lab_db: tuple[Path, dict[str, int]], args: list[str],
                               code: int, needle: str) -> None:
    db, _ = lab_db
    r = natlens(*args, "--db", str(db), check=False)
    assert r.returncode == code, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("natlens: error:") and needle in line, line


def test_foreign_and_non_sqlite_files_are_refused(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE invoices (id INTEGER)")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    for path, needle in ((other, "not a natlens database"), (junk, "not an SQLite database")):
        r = natlens("db", "stats", "--db", str(path), check=False)
        assert r.returncode == 1, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert needle in line, line


class _Dom(HTMLParser):
    """Per endpoint row of the rendered page: the numbers it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}
        self.totals: list[str] = []
        self.verdicts: list[str] = []
        self.decision_rows = 0
        self.shares: dict[str, str] = {}
        self.cis: dict[str, str] = {}
        self.texts: dict[str, list[str]] = {}
        self.timelines = 0
        self._ep: str | None = None
        self._role: str | None = None
        self._in_decisions = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-endpoint"):
            self._ep = a["data-endpoint"]
        self._role = a.get("data-role")
        if self._role == "timeline":
            self.timelines += 1
        if a.get("id") == "decision-table":
            self._in_decisions = True
        if self._in_decisions and tag == "tr":
            self.decision_rows += 1

    def handle_data(self, data: str) -> None:
        if self._role == "observed" and self._ep:
            self.rows[self._ep] = data
        elif self._role == "share" and self._ep:
            self.shares[self._ep] = data
        elif self._role == "ci" and self._ep:
            self.cis[self._ep] = data
        elif self._role == "total":
            self.totals.append(data)
        elif self._role == "verdict":
            self.verdicts.append(data)
        elif self._role:
            self.texts.setdefault(self._role, []).append(data)
        self._role = None


@pytest.fixture
def dashboard(lab_db: tuple[Path, dict[str, int]], tmp_path: Path) -> Iterator[str]:
    db = tmp_path / "copy.db"
    shutil.copy(lab_db[0], db)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "natlens", "collector", "--insecure", "--db",
                          str(db), "--listen", "127.0.0.1:0", "--http", f"127.0.0.1:{port}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        while not p.stdout.readline().startswith("http"):
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
        yield f"http://127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(timeout=30)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "chromium not installed (make install)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=30000", "--window-size=1200,900", *args],
                          capture_output=True, text=True, timeout=120)


def to_fixed(x: float) -> str:
    """JavaScript's ``x.toFixed(1)``: the double's exact value rounded half up, where
    Python's format rounds half to even (52.25 is "52.3" on the page, "52.2" in f"")."""
    return str(Decimal(x).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def test_dashboard_shows_the_reports_numbers(dashboard: str, tmp_path: Path,
                                             lab_db: tuple[Path, dict[str, int]]) -> None:
    report = json.loads(urllib.request.urlopen(f"{dashboard}/api/report").read())
    (entry,) = report["services"]
    url = f"{dashboard}/?client={CLIENT_IP}"
    dom = _Dom()
    dom.feed(chromium("--dump-dom", url).stdout)
    assert dom.rows == {e["endpoint"]: str(e["observed"]) for e in entry["endpoints"]}
    assert dom.rows == {k: str(v) for k, v in lab_db[1].items()}
    assert dom.totals == ["2000"] and dom.verdicts == [entry["verdict"]]
    assert dom.decision_rows == 1 + 500  # header + the API's page of one client's decisions
    # observed percentages as numbers, their intervals, the summary, one timeline per
    # service port, and the agents as the store saw them
    assert dom.shares == {ep: f"{to_fixed(100 * (n / 2000))}%"  # as the page computes it
                          for ep, n in lab_db[1].items()}
    assert dom.cis == {e["endpoint"]: f"{to_fixed(100 * e['ci95'][0])}%–"
                       f"{to_fixed(100 * e['ci95'][1])}%" for e in entry["endpoints"]}
    assert dom.texts["summary"] == [
        "1 service port judged: 0 skewed, 0 undeclared, 0 insufficient-data, 1 consistent"]
    assert dom.timelines == 1
    assert dom.texts["reason"] == [f"— Holm-adjusted p {entry['test']['p_value_holm']:.3g}"
                                   " ≥ alpha 0.001: consistent with the declared shares"]
    assert len(dom.texts.get("agent", [])) == 0 and "k8s-node2" in chromium(
        "--dump-dom", url).stdout
    # the window and the filters live in the URL: a link opens the same view
    dom = _Dom()
    dom.feed(chromium("--dump-dom", f"{dashboard}/?verdict=skewed&since=7d").stdout)
    assert dom.rows == {} and dom.texts["summary"][0].startswith("1 service port judged")
    shot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={shot}", url)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 900)
    assert len(png) > 20_000  # a rendered page, not a blank one (a blank one is ~5 kB)


def test_http_side_is_read_only_and_probes_answer(dashboard: str) -> None:
    for path, code in (("/healthz", 200), ("/readyz", 200), ("/nope", 404)):
        try:
            status = urllib.request.urlopen(dashboard + path).status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == code, path
    req = urllib.request.Request(f"{dashboard}/api/report", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{dashboard}/api/report?since=yesterday")
    assert e.value.code == 400 and re.search(rb"not a duration", e.value.read())


def test_report_plot_is_written(lab_db: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    natlens("report", "--db", str(lab_db[0]), "--plot", str(out), "--weight", "bytes")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_db_stats_counts_rows(lab_db: tuple[Path, dict[str, int]]) -> None:
    st = json.loads(natlens("db", "stats", "--db", str(lab_db[0]), "-o", "json").stdout)
    rows = {t["table"]: t["rows"] for t in st["tables"]}
    # 2,000 decisions, and the DESTROY of each connection whose entry the kernel dropped
    # while the run lasted (a source port reused by the client ends the old entry)
    with sqlite3.connect(lab_db[0]) as c:
        events = dict(c.execute("SELECT event, COUNT(*) FROM decisions GROUP BY event"))
    assert events.get("new") == 2000 and set(events) <= {"new", "destroy"}
    assert rows["decisions"] == sum(events.values())
    assert rows["rule_snapshots"] == 2 and rows["pods"] == 3
    assert st["bytes_per_decision"] > 0


def test_db_copy_into_postgres_answers_the_same(lab_db: tuple[Path, dict[str, int]],
                                               pg_server: PgServer) -> None:
    """A real lab run's store moved into PostgreSQL: the report, the queries and the
    row counts are the same before and after."""
    db, truth = lab_db
    url = pg_server.create_db()
    r = natlens("db", "copy", "--from", str(db), "--to", url)
    assert "copied" in r.stdout and pg_server.url().split("@")[1].split("/")[0] in r.stdout
    assert "natlens-test" not in r.stdout + r.stderr  # the password is not printed
    for args in (["report", "-o", "json"],
                 ["query", "decisions", "--client", CLIENT_IP, "-o", "json"],
                 ["query", "decisions", "--endpoint", V1, "-o", "json"],
                 ["query", "rules", "--node", "k8s-node2", "-o", "json"],
                 ["query", "undeclared", "-o", "json"]):
        before = json.loads(natlens(*args, "--db", str(db)).stdout)
        after = json.loads(natlens(*args, "--db", url).stdout)
        for out in (before, after):
            if isinstance(out, dict):  # when it was asked: now
                for k in ("generated_at", "store", "at"):
                    out.pop(k, None)
        assert after == before, args
    rows = {t["table"]: t["rows"] for t in json.loads(
        natlens("db", "stats", "--db", url, "-o", "json").stdout)["tables"]}
    old = {t["table"]: t["rows"] for t in json.loads(
        natlens("db", "stats", "--db", str(db), "-o", "json").stdout)["tables"]}
    assert rows == {t: n for t, n in old.items() if t in rows} and rows["decisions"] >= 2000
    # into a database that is not empty: refused, nothing changed
    r = natlens("db", "copy", "--from", str(db), "--to", url, check=False)
    assert r.returncode == 1 and "not empty" in r.stderr
    assert sum(truth.values()) == 2000


def foreign_db(server: PgServer) -> str:
    """A database another application uses."""
    import psycopg

    url = server.create_db()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE invoices (id int)")
    return url


@pytest.mark.parametrize(("make_url", "needle"), [
    (lambda s: s.url(password="wrong"), "password authentication failed"),
    (lambda s: s.url("nonexistent"), 'database "nonexistent" does not exist'),
    (lambda s: f"postgresql://postgres@127.0.0.1:{free_port()}/x", "refused"),
    (lambda s: "postgresql://postgres@127.0.0.1:notaport/x", "invalid"),
    (lambda s: foreign_db(s), "not a natlens database"),
])
def test_bad_postgres_urls_are_one_line(pg_server: PgServer, make_url: Any,
                                        needle: str) -> None:
    url = make_url(pg_server)
    for args in (["report", "--db", url], ["db", "stats", "--db", url],
                 ["collector", "--insecure", "--db", url, "--listen", f"127.0.0.1:{free_port()}"]):
        r = natlens(*args, check=False)
        assert r.returncode == 1, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith("natlens: error:") and needle in line and "wrong" not in line
