"""Real connections from a pod to a service; the bodies that come back are ground truth."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from natlens import netns
from natlens.lab.scenario import Scenario
from natlens.lab.state import UDP_PORTS, LabState
from natlens.proto.names import endpoint_key


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


def connect_once(vip: str, port: int, proto: str, timeout: float, sport: int) -> bytes:
    if proto == "UDP":
        v6 = ":" in vip
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if v6 else "", sport))
            s.settimeout(timeout)
            s.connect((vip, port))
            s.send(b"?")
            return s.recv(2048)
    with socket.create_connection((vip, port), timeout=timeout) as s:
        chunks: list[bytes] = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def run_traffic(sc: Scenario, st: LabState, source: str, service: str, connections: int,
                timeout: float = 3.0, fam: int | None = None) -> Tally:
    """Open ``connections`` connections one after another from pod ``source``.

    A UDP "connection" is a conntrack flow, and a datagram from a source port whose
    flow is still in the table (30 s) reuses the earlier NAT decision instead of making
    a new one. So each UDP flow gets its own source port, cycling through UDP_PORTS
    from where the lab's previous traffic stopped.
    """
    pod = sc.pod(source)
    svc, port = sc.service_port(service)
    f = fam or svc.families[0]
    vip = svc.ip_of(f)
    if vip is None:
        raise ValueError(f"service {service} has no IPv{f} cluster IP")
    # A dual-stack pod answers both families with one body; the VIP's family says which
    # of its addresses the connection went to.
    bodies = {p.serve.body.encode(): endpoint_key(ip, p.serve.port)
              for p in sc.pods if p.serve is not None and (ip := p.ip_of(f)) is not None}
    counts: Counter[str] = Counter()
    failed = 0
    error: list[BaseException] = []
    lo, hi = UDP_PORTS
    first = st.next_udp_port
    if port.protocol == "UDP":
        if connections > hi - lo:
            raise ValueError(f"at most {hi - lo} UDP flows per run")
        st.next_udp_port = lo + (first + connections - lo) % (hi - lo)
        st.save()

    def work() -> None:
        nonlocal failed
        try:
            with netns.entered(st.pods[f"{pod.namespace}/{pod.name}"]):
                for i in range(connections):
                    sport = lo + (first + i - lo) % (hi - lo)
                    try:
                        body = connect_once(vip, port.port, port.protocol, timeout, sport)
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
