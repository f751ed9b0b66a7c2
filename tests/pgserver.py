"""A real PostgreSQL server for the tests and benchmarks: Debian's binaries, ``initdb`` in a
temporary directory as the unprivileged ``postgres`` user, a free port on 127.0.0.1,
stopped and removed afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PASSWORD = "natlens-test"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no server can be started here, or None."""
    if binaries() is None:
        return "PostgreSQL is not installed (Debian package postgresql)"
    if os.geteuid() != 0:
        return "starting PostgreSQL as its own user needs root"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        bindir = binaries()
        assert bindir is not None
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="natlens-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                           "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"])
        self.start()

    def _as_postgres(self, cmd: list[str]) -> None:
        r = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True,
                           text=True, cwd=self.dir, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{cmd[0]}: {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                           str(self.dir / "log"), "-o",
                           f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                           "-c fsync=off -c max_connections=200", "start"])

    def stop(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast",
                           "stop"])

    def url(self, db: str = "postgres", user: str = "postgres",
            password: str | None = PASSWORD) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            subprocess.run(["pkill", "-9", "-f", str(self.data)], capture_output=True)
            time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)


def started() -> PgServer:
    """A new server, or the test skipped saying why there is none (failed under CI=true)."""
    from tests.require import missing

    reason = unavailable()
    if reason is not None:
        missing("a PostgreSQL test", reason)
    return PgServer()
