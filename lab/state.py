"""What a running lab created, on disk, so `down` (or a crashed `up`) can remove it all.

The state file is written before anything is created and updated after each step, so a
lab interrupted at any point is still fully known.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

UDP_PORTS = (20000, 60000)
STATE_DIR = Path(os.environ.get("NATLENS_LAB_STATE", "/run/natlens/labs"))


@dataclass
class LabState:
    name: str
    prefix: str
    scenario: str
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)      # node name → netns
    pods: dict[str, str] = field(default_factory=dict)       # pod name → netns
    pids: list[int] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    next_udp_port: int = UDP_PORTS[0]  # UDP flows need distinct source ports (see traffic)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.prefix}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    def netns_of(self, node_or_pod: str) -> str:
        for table in (self.nodes, self.pods):
            if node_or_pod in table:
                return table[node_or_pod]
        short = {k.split("/", 1)[-1]: v for k, v in self.pods.items()}
        if node_or_pod in short:
            return short[node_or_pod]
        raise KeyError(node_or_pod)


def new_prefix() -> str:
    """Short enough for interface names, random enough for labs side by side."""
    return "nl" + secrets.token_hex(3)


def load_all() -> list[LabState]:
    if not STATE_DIR.is_dir():
        return []
    out = []
    for p in sorted(STATE_DIR.glob("nl*.json")):
        try:
            out.append(LabState(**json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def find(name: str, prefix: str | None = None) -> list[LabState]:
    return [s for s in load_all() if s.name == name and (prefix is None or s.prefix == prefix)]


def kill(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, a process group we started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                if _is_zombie(pid):
                    return
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
