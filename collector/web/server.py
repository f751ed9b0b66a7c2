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
import sqlite3
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlite_utils
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from natlens.collector.web.metrics import IngestMetrics
from natlens.timeparse import duration_ns, time_ns

PAGE = resources.files("natlens.collector.web").joinpath("dashboard.html").read_bytes()


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


def serve_http(db_path: str, host: str, port: int, metrics: IngestMetrics, probes: Probes,
               token: str | None = None) -> ThreadingHTTPServer:
    from natlens.collector.query.decisions import DecisionQuery, QueryError, query_decisions
    from natlens.collector.report.build import ReportQuery, build_report

    want = f"Bearer {token}".encode() if token else None

    def read_db() -> sqlite_utils.Database:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        return sqlite_utils.Database(conn)

    def api_report(q: dict[str, str]) -> Any:
        lo, hi = window(q)
        db = read_db()
        try:
            return build_report(db, ReportQuery(q.get("service"), q.get("node"), lo, hi))
        finally:
            db.close()

    def api_decisions(q: dict[str, str]) -> Any:
        lo, hi = window(q)
        if not q.get("client"):
            raise BadRequest("client= is required")
        db = read_db()
        try:
            rows, _ = query_decisions(db, DecisionQuery(client=q["client"], node=q.get("node"),
                                                        since_ns=lo, until_ns=hi, limit=500))
        except QueryError as e:
            raise BadRequest(str(e)) from None
        finally:
            db.close()
        return rows

    routes: dict[str, Callable[[dict[str, str]], Any]] = {
        "/api/report": api_report, "/api/decisions": api_decisions}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _authorised(self, q: dict[str, str]) -> bool:
            if want is None:
                return True
            got = self.headers.get("Authorization") or (
                f"Bearer {q['token']}" if "token" in q else "")
            return hmac.compare_digest(got.encode(), want)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path in ("/healthz", "/readyz"):
                problem = probes.problem()
                ok = problem is None and (url.path == "/healthz" or probes.ready)
                why = problem or ("ok" if ok else "starting")
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                return
            if not self._authorised(q):
                self._send(401, b"missing or wrong token\n", "text/plain")
                return
            if url.path == "/":
                self._send(200, PAGE, "text/html; charset=utf-8")
            elif url.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif url.path in routes:
                try:
                    body = json.dumps(routes[url.path](q)).encode()
                except BadRequest as e:
                    self._send(400, f"{e}\n".encode(), "text/plain")
                    return
                except sqlite3.OperationalError as e:
                    self._send(503, f"database: {e}\n".encode(), "text/plain")
                    return
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:
            self._send(405, b"read-only\n", "text/plain")

        do_PUT = do_DELETE = do_PATCH = do_POST

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds would flood the log

    srv = ThreadingHTTPServer((host, port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="http", daemon=True).start()
    return srv
