"""Nobody let in: mutual TLS and the bearer token, over a real gRPC server and the
agent's real shipper, and the CLI refusing plaintext unless told --insecure."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from natlens.agent.ship.batch import Batcher
from natlens.agent.ship.client import Shipper
from natlens.collector.server import start
from natlens.collector.store.sqlite import SqliteStore
from natlens.security import (
    SecurityError,
    TlsFiles,
    channel_credentials,
    read_token,
    server_credentials,
)
from tests.certs import Pki, make_pki

from .test_store import row


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def collector(tmp_path: Path, pki: Pki, request: pytest.FixtureRequest) -> Iterator[int]:
    """A TLS collector requiring client certificates and the token "s3cret"; the test
    may ask for its own server certificate with ``@pytest.mark.parametrize``-free
    indirection via ``request.param`` (cert, key)."""
    cert, key = getattr(request, "param", (pki.server_cert, pki.server_key))
    store = SqliteStore(str(tmp_path / "db"))
    creds = server_credentials(TlsFiles(cert, key, pki.ca))
    server, port = start(store, "127.0.0.1:0", credentials=creds, token="s3cret")
    try:
        yield port
    finally:
        server.stop(0)
        store.close()


def ship(port: int, tls: TlsFiles | None, token: str | None, wait: float) -> Shipper:
    shipper = Shipper(f"127.0.0.1:{port}", backoff=(0.05, 0.2),
                      credentials=channel_credentials(tls) if tls else None, token=token,
                      server_name="localhost")
    shipper.start()
    b = Batcher("a", "k8s-node2", shipper.submit, max_records=10)
    for i in range(25):
        b.add_decision(row(i + 1))
    b.flush()
    shipper.drain(wait)
    shipper.stop()
    return shipper


def stored(tmp_path: Path) -> int:
    return sqlite_utils.Database(tmp_path / "db")["decisions"].count


def test_mutual_tls_with_the_token_delivers(collector: int, pki: Pki, tmp_path: Path) -> None:
    s = ship(collector, TlsFiles(pki.client_cert, pki.client_key, pki.ca), "s3cret", 10)
    assert (s.pending, s.acked) == (0, 3)
    assert stored(tmp_path) == 25


@pytest.mark.parametrize(("case", "needle"), [
    ("wrong-ca", "CERTIFICATE_VERIFY_FAILED"),       # agent does not trust the collector
    ("rogue-client", "trust this agent's --tls-cert"),  # the collector does not trust it
    ("no-client-cert", "trust this agent's --tls-cert"),
    ("missing-token", "missing or wrong bearer token"),
    ("wrong-token", "missing or wrong bearer token"),
    ("plaintext", "does it expect TLS"),
])
def test_refused_connections_store_nothing_and_say_why(
        collector: int, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        case: str, needle: str) -> None:
    good = TlsFiles(pki.client_cert, pki.client_key, pki.ca)
    tls, token = {
        "wrong-ca": (TlsFiles(pki.client_cert, pki.client_key, pki.other_ca), "s3cret"),
        "rogue-client": (TlsFiles(pki.rogue_client_cert, pki.rogue_client_key, pki.ca),
                         "s3cret"),
        "no-client-cert": (TlsFiles(None, None, pki.ca), "s3cret"),
        "missing-token": (good, None),
        "wrong-token": (good, "guess"),
        "plaintext": (None, "s3cret"),
    }[case]
    with caplog.at_level(logging.ERROR, "natlens.agent.ship"):
        s = ship(collector, tls, token, 1.5)
    assert s.pending == 3 and s.acked == 0 and s.send_errors >= 1  # kept, not lost
    assert stored(tmp_path) == 0
    (line,) = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert needle in line, line


def test_an_expired_collector_certificate_is_refused(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(str(tmp_path / "db"))
    server, port = start(store, "127.0.0.1:0", credentials=server_credentials(
        TlsFiles(pki.expired_cert, pki.expired_key, pki.ca)), token="s3cret")
    try:
        with caplog.at_level(logging.ERROR, "natlens.agent.ship"):
            s = ship(port, TlsFiles(pki.client_cert, pki.client_key, pki.ca), "s3cret", 1.5)
    finally:
        server.stop(0)
        store.close()
    assert s.acked == 0 and stored(tmp_path) == 0
    (line,) = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert "CERTIFICATE_VERIFY_FAILED" in line or "expired" in line, line


def natlens(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "natlens", *args], capture_output=True,
                          text=True, timeout=60)


def one_line(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("natlens: error: ") and needle in line, line


def test_cli_refuses_plaintext_and_bad_files(tmp_path: Path, pki: Pki) -> None:
    db = str(tmp_path / "c.db")
    one_line(natlens("collector", "--db", db), 2, "refusing plaintext gRPC")
    one_line(natlens("agent", "--collector", "127.0.0.1:1"), 2, "refusing plaintext gRPC")
    one_line(natlens("collector", "--db", db, "--insecure", "--tls-cert", pki.server_cert),
             2, "contradict")
    one_line(natlens("collector", "--db", db, "--tls-cert", pki.server_cert), 1,
             "--tls-cert and --tls-key go together")
    one_line(natlens("collector", "--db", db, "--tls-cert", "/nonexistent.crt", "--tls-key",
                     pki.server_key), 1, "/nonexistent.crt: No such file")
    one_line(natlens("collector", "--db", db, "--tls-cert", pki.server_key, "--tls-key",
                     pki.server_key, "--tls-ca", str(Path(__file__))), 1, "not a PEM file")
    empty = tmp_path / "token"
    empty.write_text("\n")
    one_line(natlens("agent", "--collector", "127.0.0.1:1", "--tls-ca", pki.ca,
                     "--token-file", str(empty)), 1, "expected one non-empty token")


def test_collector_says_plaintext_in_its_log(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-m", "natlens", "collector", "--insecure", "--db",
                          str(tmp_path / "c.db"), "--listen", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("listening")
        time.sleep(0.2)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert "plaintext" in err and "without a token" in err


def test_token_files_are_read_strictly(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("abc123\n")
    assert read_token(str(tmp_path / "t")) == "abc123"
    (tmp_path / "t2").write_text("two words\n")
    with pytest.raises(SecurityError, match="without spaces"):
        read_token(str(tmp_path / "t2"))
    with pytest.raises(SecurityError, match="No such file"):
        read_token(str(tmp_path / "missing"))
