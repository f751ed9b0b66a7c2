"""Both stores (SQLite, PostgreSQL): exactly-once batches, atomicity, rules epochs, schema
versions."""

import logging
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from natlens.collector.store.api import BatchRejected
from natlens.collector.store.open import StoreError, open_store
from natlens.collector.store.plan import DAY
from natlens.collector.store.schema import SCHEMA_VERSION, SchemaError
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack
from tests.pgserver import PgServer
from tests.privileged.helpers import free_port
from tests.stores import count, rows, writer


def row(t: int, ep: str = "10.244.1.168", event: pb.Event = pb.EVENT_NEW) -> DecisionRow:
    """A decision as an agent's batcher takes it."""
    return DecisionRow(t, "tcp", "10.244.1.169", 40000, "10.1.122.241", 9999, ep, 80,
                       ct_id=t, source=pb.SOURCE_NETLINK, event=event)


decision = row


def bad(t: int, **fields: object) -> DecisionRow:
    return row(t)._replace(**fields)


def batch(seq: int, decisions: list[DecisionRow], rules: list[pb.RuleSnapshot] = ()) -> pb.Batch:
    return pb.Batch(agent_id="a", boot_id="b", seq=seq, node="k8s-node2",
                    columns=pack(decisions), rules=list(rules))




def test_a_batch_sent_twice_is_stored_once(db: str) -> None:
    s = writer(db)
    b = batch(1, [decision(1), decision(2)])
    assert s.ingest(b) is True
    assert s.ingest(b) is False
    s.close()
    assert count(db, "decisions") == 2
    assert count(db, "batches") == 1


def test_out_of_order_batches_are_all_kept(db: str) -> None:
    s = writer(db)
    for seq in (3, 1, 2):
        assert s.ingest(batch(seq, [decision(seq)]))
    s.close()
    assert count(db, "decisions") == 3


@pytest.mark.parametrize("bad", [
    pb.Batch(agent_id="", boot_id="b", seq=1, node="n"),
    pb.Batch(agent_id="a", boot_id="b", seq=0, node="n"),
    batch(1, [decision(1), bad(2, vip="x", endpoint_ip="")]),
    batch(1, [bad(2, vip="x", endpoint_ip="y", event=99)]),
    batch(1, [bad(2, vip="x", endpoint_ip="y", vip_port=70000)]),
    batch(1, [decision(1), bad(1, time_ns=32 * 86_400 * 10**9)]),  # a clock that jumped
    batch(1, [bad(1, time_ns=-5)]),
])
def test_rejected_batches_store_nothing(db: str, bad: pb.Batch) -> None:
    s = writer(db)
    s.ingest(batch(7, [decision(1)]))
    with pytest.raises(BatchRejected):
        s.ingest(bad)
    s.close()
    assert count(db, "decisions") == 1
    assert count(db, "batches") == 1


def test_decisions_are_judged_by_the_rules_in_force_at_their_time(db: str) -> None:
    s = writer(db)
    s.ingest(batch(1, [decision(5)], [pb.RuleSnapshot(time_ns=10, mode="iptables", hash="h1")]))
    s.ingest(batch(2, [decision(15), decision(25)],
                   [pb.RuleSnapshot(time_ns=20, mode="iptables", hash="h2")]))
    s.close()
    s2 = writer(db)  # epochs reload from disk
    assert (s2.rules_at("k8s-node2", 12), s2.rules_at("k8s-node2", 30)) == ("h1", "h2")
    s2.close()
    assert rows(db, "SELECT time_ns, rules_hash FROM decisions ORDER BY time_ns") == [
        (5, "h1"), (15, "h1"), (25, "h2")]


def test_newer_schema_is_refused_and_foreign_files_too(tmp_path: Path) -> None:
    SqliteStore(str(tmp_path / "db")).close()
    db = sqlite_utils.Database(tmp_path / "db")
    db.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION + 1])
    db.conn.commit()
    db.close()
    with pytest.raises(SchemaError, match="newer"):
        SqliteStore(str(tmp_path / "db"))
    other = sqlite_utils.Database(tmp_path / "other")
    other["t"].insert({"x": 1})
    other.close()
    with pytest.raises(SchemaError, match="not a natlens database"):
        SqliteStore(str(tmp_path / "other"))


def test_older_schema_is_upgraded(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "db")
    db["schema_version"].insert({"version": 0})
    db.close()
    SqliteStore(str(tmp_path / "db")).close()
    assert sqlite_utils.Database(tmp_path / "db").execute(
        "SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def counter(total: int, epoch: str = "e1", closed: int = 0) -> pb.CounterDelta:
    return pb.CounterDelta(window_start_ns=1, window_end_ns=2, protocol="tcp",
                           vip="10.1.122.241", vip_port=9999, endpoint_ip="10.244.1.168",
                           endpoint_port=80, connections=total, epoch=epoch,
                           total_connections=total, total_closed=closed)


def connections(db: str) -> int:
    return int(rows(db, "SELECT COALESCE(SUM(connections), 0) FROM counters")[0][0])


def test_counter_totals_count_once_across_resends_and_restarts(db: str) -> None:
    s = writer(db)
    s.ingest(pb.Batch(agent_id="a", boot_id="b1", seq=1, node="n", counters=[counter(5)]))
    # A restarted agent (new boot) re-reads the pinned maps and ships the same total.
    s.ingest(pb.Batch(agent_id="a", boot_id="b2", seq=1, node="n", counters=[counter(5)]))
    s.ingest(pb.Batch(agent_id="a", boot_id="b2", seq=2, node="n", counters=[counter(9)]))
    # An older total arriving late (a resent batch) is stale: it adds nothing.
    s.ingest(pb.Batch(agent_id="a", boot_id="b2", seq=3, node="n", counters=[counter(7)]))
    # New maps (a new epoch) start from zero again.
    s.ingest(pb.Batch(agent_id="a", boot_id="b3", seq=1, node="n",
                      counters=[counter(2, "e2")]))
    s.close()
    assert connections(db) == 9 + 2


def test_a_batch_failing_halfway_stores_nothing(db: str) -> None:
    s = writer(db)
    s.ingest(pb.Batch(agent_id="a", boot_id="b", seq=1, node="n",
                      counters=[counter(5, closed=3)]))
    # More connections but fewer closed ones: not a state these maps can be in.
    bad = pb.Batch(agent_id="a", boot_id="b", seq=2, node="n",
                   columns=pack([decision(1), decision(2)]), counters=[counter(6, closed=1)])
    with pytest.raises(BatchRejected, match="backwards"):
        s.ingest(bad)
    assert count(db, "decisions") == 0
    assert count(db, "batches") == 1
    assert connections(db) == 5
    # the decision key the failed batch added went with it; the next batch adds it again
    assert count(db, "decision_keys") == 0
    s.ingest(pb.Batch(agent_id="a", boot_id="b", seq=2, node="n",
                      columns=pack([decision(1), decision(2)])))
    s.close()
    assert count(db, "decisions") == 2


def test_a_decision_sent_twice_is_kept_once_and_said(db: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    s = writer(db)
    s.ingest(batch(1, [decision(1), decision(2)]))
    other_conn = row(2)._replace(ct_id=99)  # same time, another connection
    with caplog.at_level(logging.WARNING, logger="natlens.collector.store"):
        assert s.ingest(batch(2, [decision(2), decision(3), other_conn]))
    assert s.repeated_decisions == 1
    assert "batch 2 from a: 1 decisions were stored already" in caplog.text
    s.close()
    assert count(db, "decisions") == 4


# ---- PostgreSQL only

def test_postgres_refuses_newer_schemas_and_other_applications(pg_server: PgServer) -> None:
    url = pg_server.create_db()
    writer(url).close()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE schema_version SET version = %s", [SCHEMA_VERSION + 1])
    with pytest.raises(StoreError, match="newer than this natlens"):
        open_store(url)
    other = pg_server.create_db()
    with psycopg.connect(other, autocommit=True) as c:
        c.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(StoreError, match=r"not a natlens database: .*invoices"):
        open_store(other)
    with pytest.raises(StoreError, match="empty database"):
        open_store(pg_server.create_db(), read_only=True)


def test_postgres_connection_errors_are_one_line_without_the_password(
        pg_server: PgServer) -> None:
    wrong = pg_server.url(password="not-it")
    with pytest.raises(StoreError) as e:
        open_store(wrong)
    assert "password authentication failed" in str(e.value) and "not-it" not in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(StoreError, match="does not exist"):
        open_store(pg_server.url("no_such_db"))
    closed = free_port()
    with pytest.raises(StoreError, match=r"refused|failed"):
        open_store(f"postgresql://postgres@127.0.0.1:{closed}/x")
    with pytest.raises(StoreError, match="not a store natlens knows"):
        open_store("mysql://root@localhost/db")


def test_postgres_keeps_decisions_in_day_partitions(pg_server: PgServer) -> None:
    url = pg_server.create_db()
    s = writer(url)
    day = 20_000 * DAY
    assert s.ingest(batch(1, [decision(day + 5)._replace(ct_id=1),
                              decision(day + DAY + 5)._replace(ct_id=2)]))
    assert {20_000, 20_001} <= set(s.partitions())
    assert count(url, "decisions") == 2
    s.close()


def test_postgres_replicas_share_one_store_exactly_once(pg_server: PgServer) -> None:
    """Two collectors on one database: a batch resent to the other replica (an agent's
    failover) is a duplicate there too; the rules one replica stored stamp the
    decisions the other stores; maintenance runs on one at a time."""
    url = pg_server.create_db()
    a, b = writer(url), writer(url)
    rules = [pb.RuleSnapshot(time_ns=10, mode="iptables", hash="h1")]
    assert a.ingest(batch(1, [decision(11)], rules))
    assert b.ingest(batch(1, [decision(11)], rules)) is False
    assert b.ingest(batch(2, [decision(12)]))
    assert rows(url, "SELECT time_ns, rules_hash FROM decisions ORDER BY time_ns") == [
        (11, "h1"), (12, "h1")]
    # kernel counter totals: the increase is taken over the last total either stored
    a.ingest(pb.Batch(agent_id="c", boot_id="b1", seq=1, node="n", counters=[counter(5)]))
    b.ingest(pb.Batch(agent_id="c", boot_id="b1", seq=2, node="n", counters=[counter(9)]))
    a.ingest(pb.Batch(agent_id="c", boot_id="b2", seq=1, node="n", counters=[counter(9)]))
    assert connections(url) == 9
    with a._leader() as first, b._leader() as second:
        assert (first, second) == (True, False)
    a.close()
    b.close()


def test_postgres_password_from_libpq_environment_and_password_file(
        pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL without its password: libpq's PGPASSWORD, or the password file."""
    from tests.pgserver import PASSWORD

    url = pg_server.create_db()
    bare = url.replace(f":{PASSWORD}@", "@")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(StoreError, match="password"):
        open_store(bare)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    open_store(bare).close()
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_server.port}:*:postgres:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    open_store(bare).close()


def test_sqlite_close_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    """Closing an sqlite3 connection while another thread writes on it crashes the
    interpreter: close() waits for the writers' lock."""
    import threading
    import time

    s = SqliteStore(str(tmp_path / "db"))
    held = threading.Event()

    def writer_thread() -> None:
        with s.lock:
            held.set()
            time.sleep(1.0)
            s.db.execute("SELECT COUNT(*) FROM batches").fetchone()

    t = threading.Thread(target=writer_thread)
    t.start()
    assert held.wait(5)
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 > 0.5
    t.join()
