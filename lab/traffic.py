"""Real connections from a pod to a service; the bodies that come back are ground truth."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from natlens import netns
from natlens.agent.rules.model import endpoint_key
from natlens.lab.scenario import Scenario
from natlens.lab.state import LabState


@dataclass
class Tally:
    service: str
    source: str
    connections: int
    failed: int
    by_endpoint: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "from": self.source, "connections": self.connections,
                "failed": self.failed, "by_endpoint": dict(sorted(self.by_endpoint.items()))}


def _one(vip: str, port: int, proto: str, timeout: float) -> bytes:
    if proto == "UDP":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((vip, port))
            s.send(b"?")
            return s.recv(2048)
    with socket.create_connection((vip, port), timeout=timeout) as s:
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def run_traffic(sc: Scenario, st: LabState, source: str, service: str, connections: int,
                timeout: float = 3.0) -> Tally:
    """Open ``connections`` connections one after another from pod ``source``."""
    pod = sc.pod(source)
    svc, port = sc.service_port(service)
    bodies = {p.serve.body.encode(): endpoint_key(p.ip, p.serve.port)
              for p in sc.pods if p.serve is not None}
    counts: Counter[str] = Counter()
    failed = 0
    error: list[BaseException] = []

    def work() -> None:
        nonlocal failed
        try:
            with netns.entered(st.pods[f"{pod.namespace}/{pod.name}"]):
                for _ in range(connections):
                    try:
                        body = _one(svc.cluster_ip, port.port, port.protocol, timeout)
                    except OSError:
                        failed += 1
                        continue
                    ep = bodies.get(body)
                    if ep is None:
                        failed += 1
                    else:
                        counts[ep] += 1
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=work, name="lab-traffic")
    t.start()
    t.join()
    if error:
        raise error[0]
    return Tally(svc.port_name(port), f"{pod.namespace}/{pod.name}", connections, failed,
                 dict(counts))
