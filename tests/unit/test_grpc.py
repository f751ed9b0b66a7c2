"""A real gRPC server and the agent's shipper over loopback: acks, resends, outages."""

import gc
import logging
import socket
from pathlib import Path

import grpc
import pytest
import sqlite_utils

from natlens.agent.ship.batch import Batcher
from natlens.agent.ship.client import Shipper
from natlens.collector.server import start
from natlens.collector.store.open import open_store
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import pack, unpack
from tests.pgserver import PgServer
from tests.stores import count

from .test_store import row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ship_and_stop(port: int, decisions: int) -> None:
    """Ship ``decisions`` in batches of 10 to the collector on ``port``, wait for every
    acknowledgement, stop."""
    shipper = Shipper(f"127.0.0.1:{port}")
    shipper.start()
    b = Batcher("a", "k8s-node2", shipper.submit, max_records=10)
    for i in range(decisions):
        b.add_decision(row(i + 1))
    b.flush()
    assert shipper.drain(10)
    shipper.stop()


def test_batches_are_acked_and_stored(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "db"))
    server, port = start(store, "127.0.0.1:0")
    ship_and_stop(port, 95)
    server.stop(0)
    store.close()
    assert sqlite_utils.Database(tmp_path / "db")["decisions"].count == 95
    assert sqlite_utils.Database(tmp_path / "db")["batches"].count == 10


def test_agent_keeps_batches_while_collector_is_down_then_delivers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    shipper = Shipper(f"127.0.0.1:{port}", backoff=(0.05, 0.2))
    shipper.start()
    b = Batcher("a", "k8s-node2", shipper.submit, max_records=5)
    with caplog.at_level(logging.ERROR, "natlens.agent.ship"):
        for i in range(20):
            b.add_decision(row(i + 1))
        assert not shipper.drain(1.0)
    assert shipper.pending == 4
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # one clear line per outage, not one per retry
    store = SqliteStore(str(tmp_path / "db"))
    server, _ = start(store, f"127.0.0.1:{port}")
    try:
        assert shipper.drain(15)
    finally:
        shipper.stop()
        server.stop(0)
        store.close()
    assert sqlite_utils.Database(tmp_path / "db")["decisions"].count == 20


def misaligned_columns() -> pb.Batch:
    b = pb.Batch(agent_id="a", boot_id="b", seq=2, node="n",
                 columns=pack([row(2), row(3)]))
    b.columns.client_ip.append("10.0.0.9")  # one address too many
    return b


@pytest.mark.parametrize("bad", [
    pb.Batch(agent_id="a", boot_id="b", seq=2, node="n",
             columns=pack([row(2), row(3)._replace(endpoint_ip="")])),
    misaligned_columns(),
], ids=["key", "columns"])
def test_a_bad_batch_is_refused_and_nothing_of_it_stored(tmp_path: Path, bad: pb.Batch) -> None:
    import grpc

    from natlens.proto import natlens_pb2_grpc as pb_grpc

    store = SqliteStore(str(tmp_path / "db"))
    server, port = start(store, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.CollectorStub(ch)
            good = pb.Batch(agent_id="a", boot_id="b", seq=1, node="n",
                            columns=pack([row(1)]))
            acks = []
            with pytest.raises(grpc.RpcError) as err:
                for ack in stub.Upload(iter([good, bad]), timeout=10):
                    acks.append(ack.seq)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert acks == [1]
    finally:
        server.stop(0)
        store.close()
    assert sqlite_utils.Database(tmp_path / "db")["decisions"].count == 1


def test_batcher_flushes_on_age() -> None:
    now = [0.0]
    out: list[pb.Batch] = []
    b = Batcher("a", "n", out.append, max_records=100, max_age=1.0, clock=lambda: now[0])
    b.add_decision(row(1))
    b.tick()
    assert out == []
    now[0] = 1.5
    b.tick()
    assert [x.seq for x in out] == [1] and unpack(out[0]) == [row(1)]


def test_a_stopped_shipper_leaves_no_call_for_the_garbage_collector(tmp_path: Path) -> None:
    """A cancelled call is its own exception; through the traceback it held itself in a
    cycle, freed only by the garbage collector, possibly at exit, where its __del__ waited for a
    lock of a stopped gRPC thread: an agent hung after logging "stopped:"."""
    store = SqliteStore(str(tmp_path / "db"))
    server, port = start(store, "127.0.0.1:0")
    gc.collect()
    gc.disable()
    try:
        ship_and_stop(port, 20)
        left = [o for o in gc.get_objects() if isinstance(o, grpc.Call)]
    finally:
        gc.enable()
        server.stop(0)
        store.close()
    assert left == []


def test_an_agent_fails_over_between_replicas_and_each_batch_is_stored_once(
        pg_server: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    """Two collectors on one PostgreSQL store; the agent is given both. The one it
    streams to stops mid-stream: the agent goes on to the other at once, resends what
    was not acknowledged, and nothing is stored twice."""
    url = pg_server.create_db()
    stores = [open_store(url), open_store(url)]
    servers = [start(s, "127.0.0.1:0") for s in stores]
    shipper = Shipper(",".join(f"127.0.0.1:{p}" for _, p in servers), backoff=(0.05, 0.2))
    shipper.start()
    b = Batcher("a", "k8s-node2", shipper.submit, max_records=10)
    try:
        with caplog.at_level(logging.WARNING, "natlens.agent.ship"):
            for i in range(500):
                b.add_decision(row(i + 1))
                if i == 200:
                    b.flush()
                    assert shipper.drain(10)
                    first = shipper.target
                    servers[shipper._at][0].stop(0)  # the one in use goes away
            b.flush()
            assert shipper.drain(15)
        assert shipper.target != first
        assert any("failing over to" in r.getMessage() for r in caplog.records)
    finally:
        shipper.stop()
        for server, _ in servers:
            server.stop(0)
    assert count(url, "decisions") == 500
    assert count(url, "batches") == 21 + 30  # 201 decisions, flushed; then 300
    for s in stores:
        s.close()


def test_collector_addresses_are_checked_one_by_one() -> None:
    from click.testing import CliRunner

    from natlens.cli import cli

    r = CliRunner().invoke(cli, ["agent", "--collector", "a:7070,b", "--node", "n"])
    assert r.exit_code == 2 and "'b' is not HOST:PORT" in r.output
