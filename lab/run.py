"""``lab run``: up → collector → one agent per node → traffic → report → down.

Real processes throughout: the collector and the agents are ``natlens`` subprocesses
talking gRPC over loopback, exactly as they would on a cluster. Whatever happens
(an error, Ctrl-C), everything started here is stopped and the lab is removed.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlite_utils

from natlens.agent.supervise import parse_sources
from natlens.collector.query.agreement import agreement
from natlens.collector.report.build import ReportQuery, build_report, rfc3339
from natlens.collector.store.db import PodRecord, Store
from natlens.lab import topology
from natlens.lab.scenario import Scenario
from natlens.lab.state import kill
from natlens.lab.traffic import run_traffic

NATLENS = [sys.executable, "-m", "natlens"]


class RunError(RuntimeError):
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
            with sqlite3.connect(db, timeout=5) as c:
                have = {r[0] for r in c.execute("SELECT DISTINCT agent_id FROM batches")}
        except sqlite3.Error:
            have = set()
        if ids <= have:
            return
        time.sleep(0.1)
    raise RunError(f"agents did not report their rules within {timeout:.0f}s")


def run_lab(sc: Scenario, scenario_path: str, source: str = "auto",
            keep_db: str | None = None, extra_agent_args: list[str] | None = None,
            ) -> dict[str, Any]:
    st = topology.up(sc, scenario_path)
    work = Path(tempfile.mkdtemp(prefix=f"natlens-{st.prefix}-"))
    db_path = Path(keep_db) if keep_db else work / "natlens.db"
    procs: list[subprocess.Popen[str]] = []
    mounted: Path | None = None
    try:
        store = Store(str(db_path))
        store.record_pods(PodRecord(ip, p.namespace, p.name, p.node)
                          for p in sc.pods for ip in p.ips)
        store.close()
        port = _free_port()
        clog = work / "collector.log"
        collector = subprocess.Popen(
            [*NATLENS, "collector", "--insecure",
             "--db", str(db_path), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=clog.open("w"), text=True, start_new_session=True)
        procs.append(collector)
        st.pids.append(collector.pid)
        st.save()
        assert collector.stdout is not None
        if not collector.stdout.readline().startswith("listening"):
            raise RunError(f"collector did not start: {_last_line(clog)}")
        agents: dict[str, subprocess.Popen[str]] = {}
        logs: dict[str, Path] = {}
        # The eBPF source pins its maps; this run's own bpffs, unmounted at the end,
        # leaves nothing behind. The lab checks every connection, so agents also ship
        # per-connection decisions (ClientIP affinity is judged on first connections).
        bpf_args: list[str] = []
        sources = parse_sources(source)
        if "auto" in sources or "ebpf" in sources:
            bpffs = work / "bpf"
            bpffs.mkdir()
            subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True,
                           capture_output=True)
            mounted = bpffs
            bpf_args = ["--decisions", "--pin-root", str(bpffs)]
        for node in sc.nodes:
            logs[node.name] = work / f"agent-{node.name}.log"
            p = subprocess.Popen(
                [*NATLENS, "agent", "--insecure",
                 "--collector", f"127.0.0.1:{port}", "--node", node.name,
                 "--netns", st.nodes[node.name], "--source", source, "--rules-interval", "1",
                 *bpf_args, *(extra_agent_args or [])],
                stdout=subprocess.DEVNULL, stderr=logs[node.name].open("w"), text=True,
                start_new_session=True)
            agents[node.name] = p
            procs.append(p)
            st.pids.append(p.pid)
            st.save()
        ids = {n.name if len(sources) == 1 else f"{n.name}/{src}"
               for n in sc.nodes for src in sources}
        _wait_for_agents(db_path, ids, agents, logs, 60)
        truth: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
        for t in sc.traffic:
            tally = run_traffic(sc, st, t.source, t.service, t.connections, fam=t.family)
            at = truth[sc.pod(t.source).node][tally.service]
            for ep, n in tally.by_endpoint.items():
                at[ep] = at.get(ep, 0) + n
        for p in agents.values():
            p.terminate()
        for name, p in agents.items():
            try:
                rc = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise RunError(f"agent for {name} did not stop within 60s") from None
            if rc != 0:
                raise RunError(f"agent for {name} exited {rc}: {_last_line(logs[name])}")
        collector.terminate()
        collector.wait(timeout=30)
        db = sqlite_utils.Database(str(db_path))
        try:
            report = build_report(db, ReportQuery())
            if len(sources) > 1:
                report["agreement"] = agreement(db, ReportQuery(), rfc3339)
        finally:
            db.close()
        return {"report": report,
                "ground_truth": {n: {s: dict(sorted(e.items())) for s, e in svcs.items()}
                                 for n, svcs in truth.items()}}
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p.pid)
        topology.down(st)
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
