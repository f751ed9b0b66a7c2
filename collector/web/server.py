"""The collector's HTTP side (``--http``): read-only, on its own thread.

``/`` the dashboard page; ``/api/report`` and ``/api/decisions`` its JSON (the same
code as ``natlens report`` and ``natlens query decisions``, on a read-only connection,
so a slow page never holds up ingest); ``/metrics``; ``/healthz`` and ``/readyz``.
With a token, every path but the probes asks for it (``Authorization: Bearer`` or
``?token=``, so the page can be opened in a browser).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from natlens.collector.store.api import Store
from natlens.collector.web.metrics import IngestMetrics
from natlens.errors import NatlensError
from natlens.timeparse import duration_ns, time_ns

PAGE = resources.files("natlens.collector.web").joinpath("dashboard.html").read_bytes()


class HttpListenError(NatlensError, OSError):
    """The HTTP address could not be bound; the message names it."""


class BadRequest(ValueError):
    """A query string the API cannot use; answered with 400 and this text."""


def window(q: dict[str, str]) -> tuple[int | None, int | None]:
    try:
        lo = (time.time_ns() - duration_ns(q["since"]) if q.get("since")
              else time_ns(q["from"]) if q.get("from") else None)
        hi = time_ns(q["to"]) if q.get("to") else None
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return lo, hi


class Probes:
    """What /healthz and /readyz report; the collector sets them."""

    def __init__(self) -> None:
        self.ready = False
        self.problem: Callable[[], str | None] = lambda: None
        # readiness only: a database that is away makes a replica take no traffic, but
        # restarting the collector would not bring it back
        self.unready: Callable[[], str | None] = lambda: None


class Api:
    """The JSON answers of ``/api/…``, each read from a store opened read-only for the
    request, so a slow page never holds up ingest."""

    def __init__(self, open_reader: Callable[[], Store]) -> None:
        self.open_reader = open_reader
        self.routes: dict[str, Callable[[dict[str, str]], Any]] = {
            "/api/report": self.report, "/api/decisions": self.decisions}

    def report(self, q: dict[str, str]) -> Any:
        from natlens.collector.report.build import ReportQuery, build_report  # scipy: lazily

        lo, hi = window(q)
        store = self.open_reader()
        try:
            return build_report(store, ReportQuery(service=q.get("service"), node=q.get("node"),
                                                   since_ns=lo, until_ns=hi))
        finally:
            store.close()

    def decisions(self, q: dict[str, str]) -> Any:
        from natlens.collector.query.decisions import DecisionQuery, QueryError, query_decisions
        from natlens.collector.report.shape import decisions_json

        lo, hi = window(q)
        if not q.get("client"):
            raise BadRequest("client= is required")
        store = self.open_reader()
        try:
            rows, _ = query_decisions(store, DecisionQuery(client=q["client"], node=q.get("node"),
                                                           since_ns=lo, until_ns=hi, limit=500))
        except QueryError as e:
            raise BadRequest(str(e)) from None
        finally:
            store.close()
        return decisions_json(rows)


class Handler(BaseHTTPRequestHandler):
    """One request; what it serves is set on the subclass ``serve_http`` makes."""

    api: Api
    metrics: IngestMetrics
    probes: Probes
    want: bytes | None = None

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self, q: dict[str, str]) -> bool:
        if self.want is None:
            return True
        got = self.headers.get("Authorization") or (
            f"Bearer {q['token']}" if "token" in q else "")
        return hmac.compare_digest(got.encode(), self.want)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path in ("/healthz", "/readyz"):
            problem = self.probes.problem()
            if problem is None and url.path == "/readyz":
                problem = self.probes.unready()
            ok = problem is None and (url.path == "/healthz" or self.probes.ready)
            why = problem or ("ok" if ok else "starting")
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
        elif not self._authorised(q):
            self._send(401, b"missing or wrong token\n", "text/plain")
        elif url.path == "/":
            self._send(200, PAGE, "text/html; charset=utf-8")
        elif url.path == "/metrics":
            self._send(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        elif url.path in self.api.routes:
            self._answer(self.api.routes[url.path], q)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _answer(self, route: Callable[[dict[str, str]], Any], q: dict[str, str]) -> None:
        try:
            body = json.dumps(route(q)).encode()
        except BadRequest as e:
            self._send(400, f"{e}\n".encode(), "text/plain")
        except NatlensError as e:
            self._send(503, f"store: {e}\n".encode(), "text/plain")
        else:
            self._send(200, body, "application/json")

    def do_POST(self) -> None:
        self._send(405, b"read-only\n", "text/plain")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes and probes every few seconds would flood the log


def serve_http(open_reader: Callable[[], Store], host: str, port: int, metrics: IngestMetrics,
               probes: Probes, token: str | None = None) -> ThreadingHTTPServer:
    """Serve on a daemon thread; ``open_reader`` opens the store read-only."""
    handler = type("BoundHandler", (Handler,), {
        "api": Api(open_reader), "metrics": metrics, "probes": probes,
        "want": f"Bearer {token}".encode() if token else None})
    try:
        srv = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise HttpListenError(f"cannot serve HTTP on {host}:{port}: {e.strerror}") from None
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="http", daemon=True).start()
    return srv
