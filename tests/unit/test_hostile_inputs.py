"""Every command, every file it reads, every kind of bad file: exit 1 or 2 and one line,
``natlens: error: …``, never a traceback; and nothing already stored is lost.

The bad files: random bytes, a good file cut in half, an empty file, a directory, a
file this user cannot read, and a good file of the wrong kind. Commands run as the
console script runs them (a process each), a few at a time.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from natlens.agent.rules.live import to_snapshot
from natlens.agent.rules.model import DeclaredEndpoint, DeclaredModel, ServicePort
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb

from .test_pcap import conversation, write

ROOT = Path(__file__).resolve().parent.parent.parent
FIX = ROOT / "tests" / "fixtures"
NOBODY = 65534


def good_files(d: Path) -> dict[str, Path]:
    """One good file of each kind a command reads."""
    db = d / "good.db"
    s = SqliteStore(str(db))
    model = DeclaredModel("iptables", (ServicePort(
        "ns/a:http", "clusterIP", "10.96.0.1", 80, "tcp",
        endpoints=(DeclaredEndpoint("10.1.0.1:80", 1.0, "KUBE-SEP-A"),)),))
    s.ingest(pb.Batch(agent_id="a", boot_id="b", seq=1, node="n",
                      rules=[to_snapshot(model, 1)]))
    s.close()
    return {"db": db, "pcap": Path(write(d / "good.pcap", conversation()[0])),
            "rules": FIX / "seed-node2.iptables-save",
            "scenario": ROOT / "examples" / "seed-bill-service.yaml",
            "pem": d / "good.pem"}


def hostile(d: Path, good: Path, wrong: Path) -> Iterator[tuple[str, Path]]:
    """(kind, path) of each bad file made from ``good`` (and ``wrong``, another kind)."""
    rnd = d / f"random-{good.name}"
    rnd.write_bytes(random.Random(7).randbytes(8192))
    yield "random bytes", rnd
    if good.is_file():
        cut = d / f"cut-{good.name}"
        data = good.read_bytes()
        cut.write_bytes(data[:len(data) // 2])
        yield "truncated", cut
    empty = d / f"empty-{good.name}"
    empty.write_bytes(b"")
    yield "empty", empty
    yield "directory", d
    locked = d / f"locked-{good.name}"
    locked.write_bytes(good.read_bytes() if good.is_file() else b"x")
    locked.chmod(0)
    yield "unreadable", locked
    yield "wrong kind", wrong


def cases(d: Path) -> list[tuple[str, list[str]]]:
    g = good_files(d)
    g["pem"].write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                        "-----END CERTIFICATE-----\n")
    out = []
    for kind, f in hostile(d, g["rules"], g["pcap"]):
        out += [(f"rules parse: {kind}", ["rules", "parse", str(f)]),
                (f"pcap import --rules: {kind}", ["pcap", "import", str(g["pcap"]), "--node",
                                                  "n", "--db", str(d / "out.db"), "--rules",
                                                  str(f)])]
    for kind, f in hostile(d, g["pcap"], g["db"]):
        out.append((f"pcap import: {kind}", ["pcap", "import", str(f), "--node", "n", "--db",
                                             str(d / "out2.db")]))
    for kind, f in hostile(d, g["db"], g["pcap"]):
        out += [(f"{' '.join(cmd[:2])}: {kind}", [*cmd, "--db", str(f)]) for cmd in (
            ["report"], ["report", "--by", "hour"], ["query", "decisions"],
            ["query", "rules", "--node", "n"], ["query", "undeclared"], ["db", "stats"])]
        if kind != "empty":  # an empty file is a new store to a writer
            out += [(f"{' '.join(cmd[:2])}: {kind}", [*cmd, "--db", str(f)]) for cmd in (
                ["collector", "--insecure", "--listen", "127.0.0.1:0"],
                ["pcap", "import", str(g["pcap"]), "--node", "n"])]
    for kind, f in hostile(d, g["scenario"], g["db"]):
        out += [(f"lab up: {kind}", ["lab", "up", str(f)]),
                (f"lab run: {kind}", ["lab", "run", str(f)])]
    # An agent that got past its files would run: on the netlink source, with a pin
    # root it may not mount, so that nothing of it could outlive the test.
    agent = ["agent", "--collector", "127.0.0.1:1", "--source", "netlink", "--pin-root",
             str(d / "not-bpffs")]
    for kind, f in hostile(d, g["pem"], g["db"]):
        out += [(f"agent --tls-ca: {kind}", [*agent, "--tls-ca", str(f)]),
                (f"agent --token-file: {kind}", [*agent, "--insecure", "--token-file",
                                                  str(f)]),
                (f"collector --tls-cert: {kind}", [
                    "collector", "--db", str(d / "c.db"), "--listen", "127.0.0.1:0",
                    "--tls-cert", str(f), "--tls-key", str(f)]),
                (f"collector --kubeconfig: {kind}", [
                    "collector", "--db", str(d / "k.db"), "--insecure", "--listen",
                    "127.0.0.1:0", "--kubeconfig", str(f)])]
    return out


def run(argv: list[str], unprivileged: bool) -> subprocess.CompletedProcess[str]:
    drop = (lambda: (os.setgid(NOBODY), os.setuid(NOBODY))) if unprivileged else None
    try:
        return subprocess.run([sys.executable, "-m", "natlens", *argv], capture_output=True,
                              text=True, timeout=30, preexec_fn=drop, cwd="/")
    except subprocess.TimeoutExpired as e:  # a command that ran on: that is no error line
        return subprocess.CompletedProcess(argv, -1, "", f"still running after 30 s: "
                                           f"{(e.stderr or b'')[-300:]!r}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("hostile")
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_every_command_fails_in_one_line_on_every_bad_file(workdir: Path) -> None:
    todo = cases(workdir)
    # Files chmod 0 stay readable to root: those cases run as nobody (the others as
    # whoever runs the tests), so that "unreadable" means unreadable.
    as_nobody = [os.geteuid() == 0 and "unreadable" in name for name, _ in todo]
    for p in workdir.rglob("*"):
        if p.is_dir():
            p.chmod(0o777)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [a for _, a in todo], as_nobody))
    bad = []
    for (name, _argv), r in zip(todo, results, strict=True):
        lines = r.stderr.strip().splitlines()
        if (r.returncode not in (1, 2) or "Traceback" in r.stderr or not lines
                or not lines[-1].startswith("natlens: error: ")
                or sum(1 for ln in lines if ln.startswith("natlens: error")) != 1):
            bad.append(f"{name}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
    assert not bad, "\n".join(bad)
    assert len(todo) > 80


def test_a_damaged_store_keeps_what_it_held(workdir: Path) -> None:
    """A store that fails to open for writing is left as it was, byte for byte."""
    db = workdir / "held.db"
    s = SqliteStore(str(db))
    s.close()
    c = sqlite3.connect(db)
    with c:
        c.execute("UPDATE schema_version SET version = 999")
    c.close()  # checkpoints the WAL into the file
    before = db.read_bytes()
    r = run(["pcap", "import", str(workdir / "good.pcap"), "--node", "n", "--db", str(db)],
            False)
    assert r.returncode == 1 and "newer than this natlens" in r.stderr
    assert db.read_bytes() == before
