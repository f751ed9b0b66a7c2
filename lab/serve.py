"""The pods' backends: one process answers every connection or datagram with its body.

Each listening socket is created inside its pod's namespace (the socket keeps that
namespace), so a single process serves every pod of a lab.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import sys
from pathlib import Path

from natlens import netns
from natlens.lab.scenario import load_scenario


def open_listeners(state_path: str) -> list[tuple[socket.socket, bytes, str]]:
    st = json.loads(Path(state_path).read_text())
    sc = load_scenario(st["scenario"])
    out = []
    for pod in sc.pods:
        if pod.serve is None:
            continue
        for ip in pod.ips:  # a dual-stack pod listens on each of its addresses
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with netns.entered(st["pods"][f"{pod.namespace}/{pod.name}"]):
                if pod.serve.protocol == "UDP":
                    s = socket.socket(fam, socket.SOCK_DGRAM)
                else:
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, pod.serve.port))
                if pod.serve.protocol == "TCP":
                    s.listen(4096)
            s.setblocking(False)
            out.append((s, pod.serve.body.encode(), pod.serve.protocol))
    return out


def serve(listeners: list[tuple[socket.socket, bytes, str]]) -> None:
    sel = selectors.DefaultSelector()
    for s, body, proto in listeners:
        sel.register(s, selectors.EVENT_READ, (body, proto))
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if not isinstance(sock, socket.socket):
                continue
            body, proto = key.data
            if proto == "UDP":
                try:
                    while True:
                        _, addr = sock.recvfrom(2048)
                        sock.sendto(body, addr)
                except BlockingIOError:
                    continue
            else:
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    try:
                        conn.setblocking(True)
                        conn.settimeout(2)
                        conn.sendall(body)
                    except OSError:
                        pass
                    finally:
                        conn.close()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        listeners = open_listeners(sys.argv[1])
    except Exception as e:  # reported to `lab up`, which fails with this line
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    sys.stdout = sys.stderr = open("/dev/null", "w")  # noqa: SIM115 - the parent has gone
    serve(listeners)


if __name__ == "__main__":
    main()
