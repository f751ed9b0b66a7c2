"""Test policy: privileged tests skip with a reason on a machine that cannot run them,
but under CI=true such a skip is a failure (they must never hide)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.pgserver import PgServer, started
from tests.require import missing

# Fuzzers and property tests run with a fixed seed and a bounded number of examples, so
# a CI run is reproducible and its time is bounded; HYPOTHESIS_PROFILE=explore searches
# with fresh seeds (and more examples) on a developer's machine.
settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None,
                          print_blob=True)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@functools.cache
def privileged_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, conntrack)"
    for tool in ("ip", "iptables", "iptables-save", "iptables-restore", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make install)"
    name = f"nlprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12).close()
    except OSError as e:
        return f"no ctnetlink socket: {e}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is None:
        return
    reason = privileged_missing()
    if reason is None:
        return
    missing("privileged test", reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (tests/pgserver.py)."""
    server = started()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store of each backend: an SQLite path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "db")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_db()
