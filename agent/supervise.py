"""``natlens agent --source all`` (or ``ebpf,netlink,pcap``): one agent process per source.

Each source runs as it would alone — its own socket, privileges dropped to what that
source needs, its own batches, acknowledgements and spool — and ships under its own
agent id (``NODE/SOURCE``), so the collector keeps who saw what apart: it counts a node
once, from its most exact source, and ``report --agreement`` compares them connection
by connection. The eBPF child ships per-connection decisions (``--decisions``) so that
it can be compared. This process only starts the children, passes SIGTERM/SIGINT on,
and stops them all if one fails, so kubelet restarts the pod as a whole.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("natlens.agent.supervise")

ALL = ("ebpf", "netlink", "pcap")
SINGLE = ("auto", "ebpf", "hook", "netlink", "pcap")


def parse_sources(value: str) -> tuple[str, ...]:
    """``auto``/one source, ``all``, or a comma list of distinct ebpf, netlink, pcap."""
    if value == "all":
        return ALL
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    if len(parts) == 1 and parts[0] in SINGLE:
        return parts
    bad = [p for p in parts if p not in ALL]
    if not parts or bad or len(set(parts)) != len(parts):
        raise ValueError(f"{value!r}: give auto, ebpf, hook, netlink, pcap, all, or a list of "
                         "distinct ebpf, netlink and pcap joined by commas")
    return tuple(sorted(parts, key=ALL.index))


@dataclass(frozen=True)
class Child:
    source: str
    argv: list[str]


def children(base: Sequence[str], sources: Sequence[str], agent_id: str,
             spool: str | None, health: str | None, decisions_args: Sequence[str],
             ) -> list[Child]:
    """The command line of each source's agent: ``base`` (every option but the ones
    set here) plus its source, id, spool folder, health port (the given port, then the
    next ones, in the order of ``sources``) and, for eBPF, decision records."""
    out = []
    for i, src in enumerate(sources):
        argv = [*base, "--source", src, "--agent-id", f"{agent_id}/{src}"]
        if spool:
            argv += ["--spool", f"{spool.rstrip('/')}/{src}"]
        if health:
            host, _, port = health.rpartition(":")
            argv += ["--health-listen", f"{host}:{int(port) + i}"]
        if src == "ebpf":
            argv += ["--decisions", *decisions_args]
        out.append(Child(src, argv))
    return out


def run(kids: list[Child]) -> int:
    """Start every child; the first to exit on its own stops the rest. Exit status: 0
    when all stopped cleanly after a signal, else the first failure's."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for k in kids:
        procs[k.source] = subprocess.Popen([sys.executable, "-m", "natlens", *k.argv])
    log.info("sources %s: one agent each (pids %s)", ", ".join(procs),
             ", ".join(str(p.pid) for p in procs.values()))
    rc = 0
    while procs:
        for src, p in list(procs.items()):
            code = p.poll()
            if code is None:
                continue
            del procs[src]
            if code != 0 and rc == 0:
                rc = code
            if not stopping:
                log.error("source %s: agent exited %d; stopping the others", src, code)
                rc = rc or 1
                stop()
        time.sleep(0.1)
    return rc
