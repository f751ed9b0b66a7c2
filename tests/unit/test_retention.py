"""Rollups and pruning with an injected clock; migration from the first released schema;
names at the time when an IP is reused; the report's distance, comparison and hours."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from natlens.agent.rules.live import to_snapshot
from natlens.agent.rules.model import DeclaredEndpoint, DeclaredModel, ServicePort
from natlens.collector.query.decisions import DecisionQuery, query_decisions
from natlens.collector.report.build import ReportQuery, build_report, build_report_by_hour
from natlens.collector.report.table import render
from natlens.collector.store.api import PodRecord, Store
from natlens.collector.store.plan import DAY, HOUR, MINUTE, floor_to
from natlens.collector.store.retention import Maintenance, Policy, prune, rollup
from natlens.collector.store.schema import MIGRATIONS, SCHEMA_VERSION
from natlens.collector.store.sql import LATE_NS
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack
from tests.pgserver import PgServer
from tests.stores import writer

T0 = 1_800_000_000 * 10**9 - (1_800_000_000 * 10**9) % HOUR  # an hour boundary
VIP, EPS = "10.96.0.10", ("10.244.1.5", "10.244.2.6")
MODEL = DeclaredModel("iptables", (ServicePort(
    "web/front:http", "clusterIP", VIP, 80, "tcp", endpoints=tuple(
        DeclaredEndpoint(f"{ip}:8080", 0.5, f"KUBE-SEP-{i}") for i, ip in enumerate(EPS))),))


def row(t: int, ep: str, client: str = "10.244.9.9", event: pb.Event = pb.EVENT_NEW,
        nbytes: int = 0) -> DecisionRow:
    return DecisionRow(t, "tcp", client, 30000 + t % 999, VIP, 80, ep, 8080, ct_id=t % 2**31,
                       source=pb.SOURCE_NETLINK, event=event, orig_bytes=nbytes,
                       reply_bytes=nbytes)


decision = row


class Feed:
    def __init__(self, store: Store, node: str = "n1") -> None:
        self.store, self.node, self.seq = store, node, 0

    def send(self, decisions: list[DecisionRow], rules: bool = False) -> None:
        self.seq += 1
        self.store.ingest(pb.Batch(agent_id=self.node, boot_id="b", seq=self.seq,
                                   node=self.node, columns=pack(decisions),
                                   rules=[to_snapshot(MODEL, T0 - HOUR)] if rules else []))


def pruned_before(store: Any) -> int:
    rows = store._rows("SELECT value_ns FROM retention WHERE name = 'pruned_before_ns'")
    return int(rows[0][0]) if rows else 0


def total(store: Store, q: ReportQuery | None = None) -> dict[str, int]:
    rep = build_report(store, q or ReportQuery())
    return {e["endpoint"]: e["observed"] for s in rep["services"] for e in s["endpoints"]}


def test_rollups_keep_the_counts_after_decisions_are_pruned(db: str) -> None:
    store = writer(db)
    feed = Feed(store)
    # 3 hours of traffic, one connection a minute alternating endpoints, bytes on close
    sent = [decision(T0 + m * MINUTE + 5, EPS[m % 2]) for m in range(180)]
    closes = [decision(T0 + m * MINUTE + 7, EPS[m % 2], event=pb.EVENT_DESTROY, nbytes=100)
              for m in range(180)]
    feed.send(sent[:60] + closes[:60], rules=True)
    feed.send(sent[60:] + closes[60:])
    before = total(store)
    assert before == {f"{EPS[0]}:8080": 90, f"{EPS[1]}:8080": 90}
    policy = Policy(decisions_ns=HOUR, rollups_ns=30 * DAY, chunk=17)
    now = T0 + 3 * HOUR + 30 * MINUTE
    Maintenance(store, policy, clock=lambda: now).run_once()
    cut = pruned_before(store)
    assert cut == now - HOUR  # older than the retention, and rolled up long ago
    left = store._rows("SELECT COUNT(*) FROM decisions")[0][0]
    # PostgreSQL drops whole day partitions: rows stay until their day is past the cut
    kept_from = floor_to(cut, DAY) if db.startswith("postgresql") else cut
    assert left == 2 * sum(1 for d in sent if d.time_ns >= kept_from)  # new + destroy rows
    # the report over everything still counts every connection: rollups before the cut
    assert total(store) == before
    minute = store._rows("SELECT SUM(connections), SUM(closed), SUM(orig_bytes) FROM "
                         "rollups WHERE granularity = 'minute'")[0]
    hour = store._rows("SELECT SUM(connections), SUM(closed), SUM(orig_bytes), COUNT(*) "
                       "FROM rollups WHERE granularity = 'hour'")[0]
    assert minute == (180, 180, 18000) and hour[:3] == minute and hour[3] == 3 * 2
    # a second pass changes nothing; rollups past their own retention go
    Maintenance(store, policy, clock=lambda: now).run_once()
    assert total(store) == before
    prune(store, now + 31 * DAY, policy)
    assert store._rows("SELECT COUNT(*) FROM rollups")[0][0] == 0
    store.close()


def test_a_late_batch_lands_in_its_rollup(db: str) -> None:
    store = writer(db)
    feed = Feed(store)
    feed.send([decision(T0 + 10 * MINUTE, EPS[0])], rules=True)
    rollup(store, T0 + 20 * MINUTE)
    # an agent cut off for a few minutes delivers a decision from minute 12
    feed.send([decision(T0 + 12 * MINUTE, EPS[1])])
    rollup(store, T0 + 20 * MINUTE + LATE_NS // 2)
    rows = store._rows("SELECT bucket_ns, endpoint, connections FROM rollups WHERE "
                            "granularity = 'minute' ORDER BY bucket_ns")
    assert rows == [(T0 + 10 * MINUTE, f"{EPS[0]}:8080", 1), (T0 + 12 * MINUTE,
                                                              f"{EPS[1]}:8080", 1)]
    store.close()


def test_the_first_released_schema_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "v1.db")
    db["schema_version"].insert({"version": 0})
    MIGRATIONS[1](db)
    db.execute("UPDATE schema_version SET version = 1")
    db["rule_snapshots"].insert({"node": "n1", "time_ns": T0, "hash": MODEL.hash,
                                 "mode": "iptables", "model": __import__("json").dumps(
                                     MODEL.to_json())})
    db["decisions"].insert_all({
        "time_ns": T0 + i, "node": "n1", "protocol": "tcp", "client_ip": "10.244.9.9",
        "client_port": 1000 + i, "vip": VIP, "vip_port": 80, "endpoint": f"{EPS[i % 2]}:8080",
        "ct_id": i, "zone": 0, "source": "netlink", "event": "new", "orig_packets": 0,
        "orig_bytes": 0, "reply_packets": 0, "reply_bytes": 0, "duration_ns": 0,
        "rules_hash": MODEL.hash, "sample_rate": 1} for i in range(10))
    db.close()
    store = SqliteStore(str(tmp_path / "v1.db"))
    assert store.db.execute("SELECT version FROM schema_version").fetchone()[0] == \
        SCHEMA_VERSION
    assert total(store) == {f"{EPS[0]}:8080": 5, f"{EPS[1]}:8080": 5}
    stats = store.stats()
    rows = {t["table"]: t["rows"] for t in stats["tables"]}
    assert rows["decisions"] == 10 and rows["rollups"] == 0
    store.close()


def test_a_reused_ip_is_named_by_the_pod_that_had_it_then(db: str) -> None:
    store = writer(db)
    store.record_pods([PodRecord(EPS[0], "web", "front-old", "n1", T0, T0 + HOUR),
                       PodRecord(EPS[0], "web", "front-new", "n2", T0 + HOUR + 1, None)])
    Feed(store).send([decision(T0 + 10, EPS[0]), decision(T0 + 2 * HOUR, EPS[0])], rules=True)
    rows, cut = query_decisions(store, DecisionQuery(endpoint=EPS[0]))
    assert not cut and [r["pod"] for r in rows] == ["web/front-old", "web/front-new"]
    assert rows[0]["service"] == "web/front:http" and rows[0]["vip"] == f"{VIP}:80"
    store.close()


def test_a_connection_is_listed_once_though_its_destroy_is_stored(db: str) -> None:
    """A client reusing a source port makes the kernel destroy the old entry while the
    traffic runs: its DESTROY row is the end of a listed decision, not another one."""
    store = writer(db)
    new = decision(T0 + 10, EPS[0])
    end = new._replace(time_ns=T0 + 20, event=pb.EVENT_DESTROY, orig_bytes=5, reply_bytes=9)
    Feed(store).send([new, end, decision(T0 + 30, EPS[1], event=pb.EVENT_RECOVERED),
                      decision(T0 + 40, EPS[1], event=pb.EVENT_SNAPSHOT)], rules=True)
    rows, _ = query_decisions(store, DecisionQuery())
    assert [(r["time_ns"], r["event"]) for r in rows] == [
        (T0 + 10, "new"), (T0 + 30, "recovered"), (T0 + 40, "snapshot")]
    # The one row per connection carries its end; the others are still open.
    assert (rows[0]["closed"], rows[0]["orig_bytes"], rows[0]["reply_bytes"]) == (True, 5, 9)
    assert [r["closed"] for r in rows[1:]] == [False, False]
    store.close()


def test_a_connection_gets_the_end_with_its_own_id_only(db: str) -> None:
    """Two connections from one client port, one after the other (ids differ): each
    gets its own end, and its end's duration gives the end time."""
    store = writer(db)
    first = decision(T0 + 10, EPS[0])._replace(ct_id=1)
    second = decision(T0 + 50, EPS[0])._replace(ct_id=2)
    end1 = first._replace(event=pb.EVENT_DESTROY, orig_bytes=1, reply_bytes=2,
                          duration_ns=30)
    Feed(store).send([first, end1, second], rules=True)
    rows, _ = query_decisions(store, DecisionQuery())
    assert [(r["ct_id"], r["closed"], r["end_ns"]) for r in rows] == [
        (1, True, T0 + 40), (2, False, None)]
    store.close()


def test_report_by_hour_tests_each_hour_and_finds_the_bad_one(db: str) -> None:
    store = writer(db)
    feed = Feed(store)
    good = [decision(T0 + i * 10**9 * 10, EPS[i % 2]) for i in range(300)]        # hour 0
    bad = [decision(T0 + HOUR + i * 10**9 * 10, EPS[0]) for i in range(300)]     # hour 1
    feed.send(good + bad, rules=True)
    rep = build_report_by_hour(store, ReportQuery())
    verdicts = {e["hour"]: e["verdict"] for e in rep["services"]}
    assert len(verdicts) == 2 and list(verdicts.values()) == ["consistent", "skewed"]
    assert rep["by"] == "hour"
    store.close()


def test_nodes_are_compared_for_the_same_service(db: str) -> None:
    store = writer(db)
    Feed(store, "n1").send([decision(T0 + i, EPS[i % 2]) for i in range(400)], rules=True)
    Feed(store, "n2").send([decision(T0 + i, EPS[0]) for i in range(400)], rules=True)
    (cmp,) = build_report(store, ReportQuery())["comparisons"]
    assert cmp["verdict"] == "different" and set(cmp["nodes"]) == {"n1", "n2"}
    assert cmp["test"]["method"] == "chi-square homogeneity"
    store.close()


def test_bytes_are_weighed_per_endpoint(db: str) -> None:
    store = writer(db)
    feed = Feed(store)
    feed.send([decision(T0 + i, EPS[i % 2]) for i in range(100)]
              + [decision(T0 + 200 + i, EPS[i % 2], event=pb.EVENT_DESTROY,
                          nbytes=900 if i % 2 == 0 else 100) for i in range(100)], rules=True)
    (s,) = build_report(store, ReportQuery(weight="bytes"))["services"]
    assert s["bytes"] == 100 * 1000 * 2 // 2
    assert {e["endpoint"]: e["byte_share"] for e in s["endpoints"]} == {
        f"{EPS[0]}:8080": 0.9, f"{EPS[1]}:8080": 0.1}
    assert s["tvd_bytes"] == pytest.approx(0.4) and "bytes_unknown" not in s
    store.close()


def test_bytes_with_no_closes_are_said_unknown_not_zero(db: str) -> None:
    """A hook agent without --closes ships decisions but no closes: the report says why
    there are no bytes, in JSON and in the table."""
    store = writer(db)
    Feed(store).send([decision(T0 + i, EPS[i % 2]) for i in range(100)], rules=True)
    rep = build_report(store, ReportQuery(weight="bytes"))
    (s,) = rep["services"]
    assert s["bytes"] == 0 and "--closes" in s["bytes_unknown"]
    console = Console(width=200, record=True)
    console.print(render(rep))
    assert "bytes: no connection closed with byte counts" in console.export_text()
    assert "bytes_unknown" not in build_report(store, ReportQuery())["services"][0]
    store.close()


def test_a_locked_database_is_said_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "db"
    SqliteStore(str(path)).close()
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA journal_mode = DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE other_program (x)")  # a write in flight: a hot journal
    try:
        r = subprocess.run([sys.executable, "-m", "natlens", "report", "--db", str(path)],
                           capture_output=True, text=True, timeout=60)
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "database is locked" in line


@given(st.one_of(st.none(), st.integers(0, 10**13)), st.one_of(st.none(), st.integers(0, 10**13)),
       st.one_of(st.none(), st.integers(1, 10**13)))
def test_plan_covers_the_window_exactly_once(since: int | None, until: int | None,
                                             rolled: int | None) -> None:
    from natlens.collector.store.plan import MINUTE as M
    from natlens.collector.store.plan import plan

    if since is not None and until is not None and until < since:
        since, until = until, since
    rolled = None if rolled is None else rolled - rolled % M
    p = plan(since, until, rolled)
    minutes, hours = p.by_granularity()
    parts = list(p.raw) + list(minutes) + list(hours)
    for lo, hi in hours:
        assert (lo is None or lo % (60 * M) == 0) and hi % (60 * M) == 0
    lo_all = since if since is not None else -(10**18)
    hi_all = until + 1 if until is not None else 10**18
    pieces = sorted((lo if lo is not None else -(10**18), hi if hi is not None else 10**18)
                    for lo, hi in parts)
    assert pieces[0][0] == lo_all and pieces[-1][1] == hi_all  # from start to end
    for (_, a_hi), (b_lo, _) in itertools.pairwise(pieces):
        assert a_hi == b_lo                                      # no gap, no overlap
    if p.rollup:
        lo, hi = p.rollup
        assert rolled is not None and hi <= rolled and hi % M == 0
        assert lo is None or lo % M == 0


def test_reports_read_rollups_for_whole_minutes_and_rows_for_the_rest(db: str) -> None:
    store = writer(db)
    feed = Feed(store)
    sent = [decision(T0 + i * 20 * 10**9 + 3, EPS[i % 3 == 0]) for i in range(600)]  # 3h20
    feed.send(sent, rules=True)
    windows = [(None, None), (T0 + 90 * 10**9 + 5, None), (T0 + 61 * 10**9, T0 + 9000 * 10**9),
               (None, T0 + 7300 * 10**9 + 17), (T0 + HOUR - 1, T0 + 2 * HOUR)]
    expected = []
    for lo, hi in windows:
        want: dict[str, int] = {}
        for d in sent:
            if (lo is None or d.time_ns >= lo) and (hi is None or d.time_ns <= hi):
                key = f"{d.endpoint_ip}:8080"
                want[key] = want.get(key, 0) + 1
        expected.append(want)
    rollup(store, T0 + 150 * MINUTE)  # two whole hours, minutes, and raw rows after
    for (lo, hi), want in zip(windows, expected, strict=True):
        got = {k: v for k, v in total(store, ReportQuery(since_ns=lo, until_ns=hi)).items()
               if v}
        assert got == want, (lo, hi)
    store.close()


def test_postgres_retention_drops_whole_days_on_one_replica(pg_server: PgServer) -> None:
    """Both replicas run a maintenance pass at once: one holds the lock and removes
    each day once; the rollups keep every count."""
    url = pg_server.create_db()
    a, b = writer(url), writer(url)
    day0 = floor_to(T0, DAY)
    sent = [decision(day0 + d * DAY + i * MINUTE, EPS[i % 2]) for d in range(4)
            for i in range(30)]
    Feed(a).send(sent, rules=True)
    before = total(a)
    now = day0 + 4 * DAY + HOUR
    policy = Policy(decisions_ns=2 * DAY, rollups_ns=30 * DAY)
    with b._leader():  # b is in the middle of its own pass
        assert Maintenance(a, policy, clock=lambda: now).run_once() == {}
    removed = [Maintenance(s, policy, clock=lambda: now) for s in (a, b)]
    results: list[dict[str, int]] = []
    threads = [threading.Thread(target=lambda m=m: results.append(m.run_once()))
               for m in removed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.get("decisions", 0) for r in results) == 2 * 30  # days 0 and 1, once
    assert [d for d in a.partitions() if d < day0 // DAY + 2] == []
    assert total(a) == before == total(b)
    a.close()
    b.close()
