"""IPv6 through the eBPF source: ip6tables DNAT in a namespace of the test's own,
TCP and UDP, counted exactly against what the client received."""

from __future__ import annotations

import secrets
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from natlens import netns

from .helpers import free_port, report_of, start, wait_for

pytestmark = pytest.mark.privileged
VIP = "fd00::100"
BACKENDS = {"fd00::1": b"one", "fd00::2": b"two"}


def sh(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)


@pytest.fixture
def v6ns() -> Iterator[str]:
    ns = f"nl{secrets.token_hex(3)}-v6"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sh(ns, "ip", "link", "set", "lo", "up")
        for a in (*BACKENDS, VIP):
            sh(ns, "ip", "-6", "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        for proto, port, to in (("tcp", "80", "8080"), ("udp", "53", "5353")):
            sh(ns, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", f"{VIP}/128", "-p", proto,
               "--dport", port, "-m", "statistic", "--mode", "random", "--probability", "0.5",
               "-j", "DNAT", "--to-destination", f"[fd00::1]:{to}")
            sh(ns, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", f"{VIP}/128", "-p", proto,
               "--dport", port, "-j", "DNAT", "--to-destination", f"[fd00::2]:{to}")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def serve(ns: str) -> list[socket.socket]:
    """TCP on 8080 and UDP on 5353 at each backend, answering with its name."""
    socks = []
    with netns.entered(ns):
        for addr, body in BACKENDS.items():
            t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            t.bind((addr, 8080))
            t.listen(512)
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            u.bind((addr, 5353))
            socks += [t, u]
            threading.Thread(target=_tcp, args=(t, body), daemon=True).start()
            threading.Thread(target=_udp, args=(u, body), daemon=True).start()
    return socks


def _tcp(s: socket.socket, body: bytes) -> None:
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            return
        with c:
            c.sendall(body)


def _udp(s: socket.socket, body: bytes) -> None:
    while True:
        try:
            _, addr = s.recvfrom(64)
            s.sendto(body, addr)
        except OSError:
            return


def clients(ns: str, n: int) -> dict[str, Counter[str]]:
    names = {body: addr for addr, body in BACKENDS.items()}
    tally: dict[str, Counter[str]] = {"tcp": Counter(), "udp": Counter()}
    with netns.entered(ns):
        for i in range(n):
            with socket.create_connection((VIP, 80), timeout=5) as c:
                body = b"".join(iter(lambda c=c: c.recv(64), b""))
            tally["tcp"][f"[{names[body]}]:8080"] += 1
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
                # A source port reused within conntrack's UDP timeout would reuse the
                # earlier flow and its NAT decision: each datagram gets its own port.
                u.bind(("::", 20000 + i))
                u.settimeout(5)
                u.sendto(b"?", (VIP, 53))
                tally["udp"][f"[{names[u.recv(64)]}]:5353"] += 1
    return tally


def test_ipv6_tcp_and_udp_are_counted_exactly(v6ns: str, tmp_path: Path, bpffs: Path) -> None:
    socks = serve(v6ns)
    db, port = tmp_path / "natlens.db", free_port()
    collector = start(["collector", "--insecure", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
                      tmp_path / "collector.log")
    log = tmp_path / "agent.log"
    agent = start(["agent", "--insecure",
                   "--collector", f"127.0.0.1:{port}", "--node", "v6", "--netns",
                   v6ns, "--source", "ebpf", "--decisions", "--pin-root", str(bpffs)], log)
    try:
        wait_for(lambda: "subscribed" in log.read_text(), 60)
        tally = clients(v6ns, 300)
    finally:
        agent.terminate()
        assert agent.wait(timeout=60) == 0, log.read_text()
        collector.terminate()
        collector.wait(timeout=30)
        for s in socks:
            s.close()
    rep = report_of(db)
    # No kube-proxy rules in this namespace: the decisions are reported as unmatched.
    got: dict[str, Any] = {u["protocol"]: u["observed"] for u in rep["unmatched"]
                           if u["vip"] == VIP}
    assert got == {"tcp": dict(tally["tcp"]), "udp": dict(tally["udp"])}
    assert sum(tally["tcp"].values()) == sum(tally["udp"].values()) == 300
    stored = sqlite_utils.Database(db).execute(
        "SELECT COUNT(*) FROM decisions WHERE vip=? AND event='new'", [VIP]).fetchone()[0]
    assert stored == 600  # decision mode: every IPv6 decision also as a record
