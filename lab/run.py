"""``lab run``: up → collector → one agent per node → traffic → report → down.

Real processes throughout: the collector and the agents are ``natlens`` subprocesses
talking gRPC over loopback, exactly as they would on a cluster. Whatever happens
(an error, Ctrl-C), everything started here is stopped and the lab is removed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from natlens.agent.supervise import parse_sources
from natlens.collector.query.agreement import agreement
from natlens.collector.report.build import ReportQuery, build_report
from natlens.collector.report.shape import agreement_json
from natlens.collector.store.api import PodRecord, Window
from natlens.collector.store.open import open_store
from natlens.errors import NatlensError
from natlens.lab import topology
from natlens.lab.scenario import Scenario
from natlens.lab.state import LabState, kill
from natlens.lab.traffic import run_traffic

NATLENS = [sys.executable, "-m", "natlens"]


class RunError(NatlensError, RuntimeError):
    """A lab run could not complete; the message says which step and why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _wait_for_agents(db: Path, ids: set[str], agents: dict[str, subprocess.Popen[str]],
                     logs: dict[str, Path], timeout: float) -> None:
    """Until every agent (by id: several per node when it runs several sources) has
    shipped its first batch, which holds the node's rules."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node, p in agents.items():
            if p.poll() is not None:
                raise RunError(f"agent for {node} exited ({p.returncode}): "
                               f"{_last_line(logs[node])}")
        try:
            store = open_store(str(db), read_only=True)
            try:
                have = store.agents()
            finally:
                store.close()
        except NatlensError:
            have = set()  # the collector has not created it yet
        if ids <= have:
            return
        time.sleep(0.1)
    raise RunError(f"agents did not report their rules within {timeout:.0f}s")


class _Run:
    """One run's processes, files and bpffs, all removed by ``close``."""

    def __init__(self, sc: Scenario, st: LabState, keep_db: str | None) -> None:
        self.sc, self.st = sc, st
        self.work = Path(tempfile.mkdtemp(prefix=f"natlens-{st.prefix}-"))
        self.db = Path(keep_db) if keep_db else self.work / "natlens.db"
        self.procs: list[subprocess.Popen[str]] = []
        self.mounted: Path | None = None
        self.agents: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, Path] = {}

    def spawn(self, argv: list[str], log: Path, stdout: int) -> subprocess.Popen[str]:
        p = subprocess.Popen([*NATLENS, *argv], stdout=stdout, stderr=log.open("w"),
                             text=True, start_new_session=True)
        self.procs.append(p)
        self.st.pids.append(p.pid)
        self.st.save()
        return p

    def collector(self) -> tuple[subprocess.Popen[str], int]:
        store = open_store(str(self.db))
        store.record_pods(PodRecord(ip, p.namespace, p.name, p.node)
                          for p in self.sc.pods for ip in p.ips)
        store.close()
        port = _free_port()
        clog = self.work / "collector.log"
        c = self.spawn(["collector", "--insecure", "--db", str(self.db), "--listen",
                        f"127.0.0.1:{port}"], clog, subprocess.PIPE)
        assert c.stdout is not None
        if not c.stdout.readline().startswith("listening"):
            raise RunError(f"collector did not start: {_last_line(clog)}")
        return c, port

    def bpf_args(self, sources: tuple[str, ...]) -> list[str]:
        """The hook and eBPF sources pin their maps (and the hook its links); this run's
        own bpffs, unmounted at the end, leaves nothing behind."""
        if not {"auto", "ebpf", "hook"} & set(sources):
            return []
        bpffs = self.work / "bpf"
        bpffs.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True,
                       capture_output=True)
        self.mounted = bpffs
        # The lab's reports show bytes: the hook reads closes here (off by default).
        closes = ["--closes"] if {"auto", "hook"} & set(sources) else []
        return ["--pin-root", str(bpffs), *closes]

    def start_agents(self, port: int, source: str, extra: list[str]) -> None:
        for node in self.sc.nodes:
            self.logs[node.name] = self.work / f"agent-{node.name}.log"
            self.agents[node.name] = self.spawn(
                ["agent", "--insecure", "--collector", f"127.0.0.1:{port}", "--node",
                 node.name, "--netns", self.st.nodes[node.name], "--source", source,
                 "--rules-interval", "1", *extra], self.logs[node.name], subprocess.DEVNULL)

    def stop_agents(self) -> None:
        for p in self.agents.values():
            p.terminate()
        for name, p in self.agents.items():
            try:
                rc = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise RunError(f"agent for {name} did not stop within 60s") from None
            if rc != 0:
                raise RunError(f"agent for {name} exited {rc}: {_last_line(self.logs[name])}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                kill(p.pid)
        topology.down(self.st)
        if self.mounted is not None:
            subprocess.run(["umount", str(self.mounted)], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def _traffic(sc: Scenario, st: LabState) -> dict[str, dict[str, dict[str, int]]]:
    """Every connection of the scenario; the client-side tally, per node and service."""
    truth: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for t in sc.traffic:
        tally = run_traffic(sc, st, t.source, t.service, t.connections, fam=t.family)
        at = truth[sc.pod(t.source).node][tally.service]
        for ep, n in tally.by_endpoint.items():
            at[ep] = at.get(ep, 0) + n
    return {n: {s: dict(sorted(e.items())) for s, e in svcs.items()}
            for n, svcs in truth.items()}


def run_lab(sc: Scenario, scenario_path: str, source: str = "auto",
            keep_db: str | None = None, extra_agent_args: list[str] | None = None,
            ) -> dict[str, Any]:
    run = _Run(sc, topology.up(sc, scenario_path), keep_db)
    try:
        collector, port = run.collector()
        sources = parse_sources(source)
        run.start_agents(port, source, [*run.bpf_args(sources), *(extra_agent_args or [])])
        ids = {n.name if len(sources) == 1 else f"{n.name}/{src}"
               for n in sc.nodes for src in sources}
        _wait_for_agents(run.db, ids, run.agents, run.logs, 60)
        truth = _traffic(sc, run.st)
        run.stop_agents()
        collector.terminate()
        collector.wait(timeout=30)
        store = open_store(str(run.db), read_only=True)
        try:
            report = build_report(store, ReportQuery())
            if len(sources) > 1:
                report["agreement"] = agreement_json(agreement(store, Window()))
        finally:
            store.close()
        return {"report": report, "ground_truth": truth}
    finally:
        run.close()
