"""The agent's health endpoint for kubelet probes: ``/healthz`` (the source loop is
turning) and ``/readyz`` (subscribed to conntrack and the rules were read once), and
``/metrics`` beside them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Health:
    """What the probes look at; the agent's loop calls ``beat`` every turn."""

    def __init__(self, stall_after: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.stall_after, self._clock = stall_after, clock
        self._beat = clock()
        self.ready = False
        self.reason = "starting"

    def beat(self) -> None:
        self._beat = self._clock()

    def live(self) -> tuple[bool, str]:
        age = self._clock() - self._beat
        if age > self.stall_after:
            return False, f"source loop stalled for {age:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        ok, why = self.live()
        if not ok:
            return ok, why
        return (True, "ok") if self.ready else (False, self.reason)


def serve(health: Health, host: str, port: int,
          metrics: CollectorRegistry | None = None) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; returns the server (``.server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics" and metrics is not None:
                body = generate_latest(metrics)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            check = {"/healthz": health.live, "/readyz": health.readiness}.get(self.path)
            if check is None:
                self.send_error(404)
                return
            ok, why = check()
            body = (why + "\n").encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would flood the agent's log

    srv = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=srv.serve_forever, name="health", daemon=True).start()
    return srv
