"""The Kubernetes watch against a local server speaking the API's wire format: names at
the time across IP reuse, 410 Gone and relist, bookmarks, endpoint epochs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natlens.collector.k8s.state import Holder, Owners, endpoint_set, pod_ips
from natlens.collector.k8s.watch import Watcher, api_client
from natlens.collector.query.decisions import DecisionQuery, query_decisions
from natlens.collector.report.build import ReportQuery, build_report
from tests.k8s_fake import FakeApiServer, endpoint_slice, pod, service
from tests.privileged.helpers import wait_for
from tests.stores import writer

from .test_retention import EPS, Feed, decision


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    f = FakeApiServer()
    yield f
    f.close()


@pytest.fixture
def watched(fake: FakeApiServer, tmp_path: Path,
            db: str) -> Iterator[tuple[Any, Watcher]]:
    """The watch writing into each backend."""
    store = writer(db)
    fake.apply("pods", "ADDED", pod("front-old", EPS[0], node="n1"))
    fake.apply("services", "ADDED", service("front", "10.96.0.10", namespace="web"))
    fake.apply("endpointslices", "ADDED", endpoint_slice("front", [EPS[0]], namespace="web"))
    w = Watcher(store, api_client(fake.kubeconfig(tmp_path / "kubeconfig")), watch_timeout=30)
    w.start()
    for ev in w.synced.values():
        assert ev.wait(15)
    yield store, w
    w.stop()
    store.close()


def holders(store: Any, ip: str) -> list[tuple[str, bool]]:
    return [(r[0], r[1] is None) for r in store._rows(
        "SELECT name, to_ns FROM pods WHERE ip = ? ORDER BY from_ns", [ip])]


def test_a_reused_ip_names_each_pod_in_its_own_time(fake: FakeApiServer,
                                                    watched: tuple[Any, Watcher]) -> None:
    store, _ = watched
    feed = Feed(store)
    feed.send([decision(time.time_ns(), EPS[0])], rules=True)
    fake.apply("pods", "DELETED", pod("front-old", EPS[0], node="n1"))
    wait_for(lambda: holders(store, EPS[0]) == [("front-old", False)])
    fake.apply("pods", "ADDED", pod("front-new", EPS[0], node="n2"))
    wait_for(lambda: holders(store, EPS[0]) == [("front-old", False), ("front-new", True)])
    feed.send([decision(time.time_ns(), EPS[0])])
    rows, _ = query_decisions(store, DecisionQuery(endpoint=EPS[0]))
    assert [r["pod"] for r in rows] == ["istio-demo/front-old", "istio-demo/front-new"]


def test_410_gone_lists_again_and_closes_what_vanished(
        fake: FakeApiServer, watched: tuple[Any, Watcher]) -> None:
    store, w = watched
    fake.drop_watches()
    # while the watch reconnects, a pod goes and another comes, then history is compacted
    fake.apply("pods", "DELETED", pod("front-old", EPS[0], node="n1"))
    fake.apply("pods", "ADDED", pod("back-1", EPS[1], node="n2"))
    fake.compact()
    fake.drop_watches()
    wait_for(lambda: w.relists["pods"] >= 1)
    wait_for(lambda: holders(store, EPS[1]) == [("back-1", True)]
             and holders(store, EPS[0]) == [("front-old", False)])
    assert fake.gone_sent >= 1


def test_bookmarks_keep_the_watch_current(fake: FakeApiServer,
                                          watched: tuple[Any, Watcher]) -> None:
    store, w = watched
    wait_for(lambda: w.bookmarks["pods"] >= 1)
    fake.apply("pods", "MODIFIED", pod("front-old", [EPS[0], "fd00::5"], node="n1"))
    wait_for(lambda: holders(store, "fd00::5") == [("front-old", True)])
    assert w.relists["pods"] == 0


def test_an_endpoint_change_starts_a_new_rules_epoch(fake: FakeApiServer,
                                                     watched: tuple[Any, Watcher]) -> None:
    store, _ = watched
    feed = Feed(store)
    feed.send([decision(time.time_ns(), EPS[0]) for _ in range(3)], rules=True)
    before = store.rules_at("n1", time.time_ns())
    fake.apply("endpointslices", "MODIFIED",
               endpoint_slice("front", [EPS[0], EPS[1]], namespace="web"))
    wait_for(lambda: store.rules_at("n1", time.time_ns()) != before)
    after = store.rules_at("n1", time.time_ns())
    assert after.startswith(before + "@k8s:")
    feed.send([decision(time.time_ns(), EPS[1]) for _ in range(2)])
    versions = {s["rules_version"]: s["total"] for s in build_report(
        store, ReportQuery())["services"]}
    assert versions == {before: 3, after: 2}  # never judged together
    # a resync that lists the same endpoints makes no new epoch
    fake.apply("endpointslices", "MODIFIED",
               endpoint_slice("front", [EPS[1], EPS[0]], namespace="web"))
    time.sleep(0.5)
    assert store.rules_at("n1", time.time_ns()) == after


def test_service_cluster_ips_are_recorded(watched: tuple[Any, Watcher]) -> None:
    store, _ = watched
    wait_for(lambda: store._rows("SELECT namespace, name FROM services WHERE vip = ?",
                                 ["10.96.0.10"]) == [("web", "front")])


def test_owners_bookkeeping() -> None:
    o = Owners()
    a, b = Holder("ns", "a"), Holder("ns", "b")
    assert o.update("u1", a, frozenset({"1.1.1.1"})) == ([("1.1.1.1", a)], [])
    assert o.update("u1", a, frozenset({"1.1.1.1", "fd00::1"})) == ([("fd00::1", a)], [])
    assert o.update("u1", a, frozenset()) == ([], [("1.1.1.1", a), ("fd00::1", a)])
    o.update("u2", b, frozenset({"2.2.2.2"}))
    assert o.forget_missing({"u3"}) == [("2.2.2.2", b)]
    finished = pod("x", "3.3.3.3", phase="Succeeded")
    assert pod_ips(finished) == frozenset()
    assert endpoint_set([endpoint_slice("s", ["1.1.1.1", "2.2.2.2"])]) == endpoint_set(
        [endpoint_slice("s", ["2.2.2.2"]), endpoint_slice("s", ["1.1.1.1"], suffix="x")])


def test_collector_cli_watches_with_a_kubeconfig(fake: FakeApiServer, tmp_path: Path) -> None:
    fake.apply("pods", "ADDED", pod("front-old", EPS[0], node="n1"))
    db = tmp_path / "c.db"
    p = subprocess.Popen([sys.executable, "-m", "natlens", "collector", "--insecure", "--db",
                          str(db), "--listen", "127.0.0.1:0", "--kubeconfig",
                          fake.kubeconfig(tmp_path / "kc")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import sqlite3

        def named() -> bool:
            try:
                with sqlite3.connect(db) as c:
                    return bool(c.execute("SELECT 1 FROM pods WHERE name = 'front-old'")
                                .fetchone())
            except sqlite3.Error:
                return False

        wait_for(named)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert "watching pods, services and endpointslices" in err
    r = subprocess.run([sys.executable, "-m", "natlens", "collector", "--insecure", "--db",
                        str(db), "--kubeconfig", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no such file" in r.stderr


def test_stop_waits_for_the_write_in_flight(fake: FakeApiServer,
                                            watched: tuple[Any, Watcher]) -> None:
    """The collector closes the store right after stopping the watch, and SQLite crashes
    the interpreter when a connection is closed under a write: stop() returns only once
    the event being written is written."""
    store, w = watched
    wait_for(lambda: holders(store, EPS[0]) == [("front-old", True)])
    writing, real = threading.Event(), store.pod_intervals

    def slow(*args: Any) -> None:  # the store, one second slower
        writing.set()
        time.sleep(1.0)
        real(*args)

    store.pod_intervals = slow
    fake.apply("pods", "DELETED", pod("front-old", EPS[0], node="n1"))
    assert writing.wait(15)
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 > 0.5
    assert holders(store, EPS[0]) == [("front-old", False)]  # written before stop returned
