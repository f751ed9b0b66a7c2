"""Reading changes nothing: report, query and db stats open the store read-only and
leave every byte (and the folder) as it was; ``collector --read-only`` serves the
dashboard and API over an archived store without pruning or rolling anything up; and
one store has one writer."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from natlens.cli import cli
from natlens.collector.store.plan import DAY, HOUR
from natlens.collector.store.retention import rollup
from natlens.collector.store.sqlite import SqliteStore, StoreHeld

from .test_grpc import free_port
from .test_retention import EPS, Feed, decision

T_OLD = time.time_ns() - 30 * DAY  # past every default retention


def folder(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A store a collector filled a month ago and closed."""
    d = tmp_path / "archive"
    d.mkdir()
    store = SqliteStore(str(d / "old.db"))
    feed = Feed(store)
    feed.send([decision(T_OLD + i * 10**9, EPS[i % 2]) for i in range(200)], rules=True)
    rollup(store, T_OLD + HOUR)
    store.close()
    return d / "old.db"


@pytest.mark.parametrize("args", [
    ["report"], ["report", "-o", "json"], ["report", "--by", "hour", "--since", "30d"],
    ["report", "--agreement"], ["report", "--weight", "bytes"],
    ["query", "decisions", "--client", "10.244.9.9"],
    ["query", "rules", "--node", "n1", "--at", "2030-01-01T00:00:00Z"],
    ["query", "undeclared"], ["db", "stats"], ["db", "stats", "-o", "json"]])
def test_reading_a_store_changes_no_byte(archive: Path, args: list[str]) -> None:
    before = folder(archive.parent)
    r = CliRunner().invoke(cli, [*args, "--db", str(archive)])
    assert r.exit_code == 0, r.output
    assert folder(archive.parent) == before


def test_a_plot_is_drawn_from_a_store_it_does_not_touch(archive: Path, tmp_path: Path) -> None:
    before = folder(archive.parent)
    r = CliRunner().invoke(cli, ["report", "--db", str(archive), "--plot",
                                 str(tmp_path / "shares.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "shares.png").stat().st_size > 1000
    assert folder(archive.parent) == before


def test_collector_read_only_serves_an_archive_and_prunes_nothing(archive: Path) -> None:
    before = folder(archive.parent)
    http = f"127.0.0.1:{free_port()}"
    p = subprocess.Popen([sys.executable, "-m", "natlens", "collector", "--read-only", "--db",
                          str(archive), "--http", http, "--maintenance-interval", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("http ")
        rep = json.load(urllib.request.urlopen(f"http://{http}/api/report?since=40d",
                                               timeout=10))
        assert rep["services"][0]["total"] == 200
        assert urllib.request.urlopen(f"http://{http}/readyz", timeout=10).status == 200
        time.sleep(2.5)  # two maintenance intervals: a writer would have pruned by now
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "read-only" in err and "listening" not in err
    assert folder(archive.parent) == before


def test_an_older_schema_is_said_and_left_alone(archive: Path) -> None:
    import sqlite3

    c = sqlite3.connect(archive)
    with c:
        c.execute("UPDATE schema_version SET version = 6")
    c.close()
    before = folder(archive.parent)
    r = CliRunner().invoke(cli, ["report", "--db", str(archive)])
    assert r.exit_code == 1 and "written by an older natlens" in r.stderr
    assert folder(archive.parent) == before


def test_one_writer_per_store(archive: Path) -> None:
    first = SqliteStore(str(archive))
    try:
        with pytest.raises(StoreHeld, match="written by another natlens process"):
            SqliteStore(str(archive))
        reader = SqliteStore(str(archive), read_only=True)  # readers are never refused
        assert reader.nodes() == ["n1"]
        reader.close()
    finally:
        first.close()
    SqliteStore(str(archive)).close()  # the lock went with the first writer


def test_a_second_collector_on_the_same_store_or_address_is_refused(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "natlens", "collector", "--insecure"]
    first = subprocess.Popen([*argv, "--db", str(tmp_path / "a.db"), "--listen",
                              f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().startswith("listening")
        for db, listen, needle in (
                (tmp_path / "a.db", f"127.0.0.1:{free_port()}", "written by another natlens"),
                (tmp_path / "b.db", f"127.0.0.1:{port}", f"cannot listen on 127.0.0.1:{port}")):
            r = subprocess.run([*argv, "--db", str(db), "--listen", listen],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 1, r.stderr
            assert r.stderr.strip().splitlines()[-1].startswith("natlens: error: ")
            assert needle in r.stderr and "Traceback" not in r.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_an_address_whose_old_connections_linger_is_free() -> None:
    """A collector restarted after kill -9 finds its port with the dead one's accepted
    connections in TIME_WAIT: that must not keep it out (the 30-minute soak's restart
    met exactly this), while a listener must."""
    import socket

    from natlens.collector.server import ListenError, check_free

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
        check_free(f"127.0.0.1:{port}")
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    client.close()
    listener.close()
    states = subprocess.run(["ss", "-tanH", "state", "time-wait", f"sport = :{port}"],
                            capture_output=True, text=True).stdout
    assert states.strip(), "no TIME_WAIT left to test against"
    check_free(f"127.0.0.1:{port}")
