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
    """The JSON answers of ``/api/…`` (what ``natlens report`` and ``natlens query`` print
    with -o json; ``natlens --server URL`` asks them), each read from a store opened
    read-only for the request, so a slow page never holds up ingest."""

    def __init__(self, open_reader: Callable[[], Store]) -> None:
        self.open_reader = open_reader
        self.routes: dict[str, Callable[[dict[str, str]], Any]] = {
            "/api/report": self.report, "/api/decisions": self.decisions,
            "/api/rules": self.rules, "/api/undeclared": self.undeclared,
            "/api/timeline": self.timeline, "/api/agents": self.agents}

    def _read(self, answer: Callable[[Store], Any]) -> Any:
        """``answer`` on a reader; a question the store cannot answer is a 400."""
        from natlens.collector.query.decisions import QueryError
        from natlens.collector.report.build import ReportError

        store = self.open_reader()
        try:
            return answer(store)
        except (QueryError, ReportError) as e:
            raise BadRequest(str(e)) from None
        finally:
            store.close()

    @staticmethod
    def _report_query(q: dict[str, str]) -> Any:
        from natlens.collector.report.build import DEFAULT_ALPHA, ReportQuery

        lo, hi = window(q)
        try:
            alpha = float(q.get("alpha", DEFAULT_ALPHA))
        except ValueError:
            raise BadRequest("alpha= is not a number") from None
        if not 0 < alpha < 1 or q.get("weight", "connections") not in ("connections",
                                                                       "bytes"):
            raise BadRequest("alpha= must be in (0, 1), weight= connections or bytes")
        return ReportQuery(service=q.get("service") or None, node=q.get("node") or None,
                           since_ns=lo, until_ns=hi, alpha=alpha,
                           weight=q.get("weight", "connections"))

    def report(self, q: dict[str, str]) -> Any:
        from natlens.collector.report.select import report_for  # scipy: lazily

        rq = self._report_query(q)
        return self._read(lambda store: report_for(store, rq, q.get("by") == "hour"))

    def decisions(self, q: dict[str, str]) -> Any:
        from natlens.collector.query.decisions import DecisionQuery, query_decisions
        from natlens.collector.report.shape import decisions_json

        lo, hi = window(q)
        if not any(q.get(k) for k in ("client", "service", "endpoint", "pod", "since",
                                      "from")):
            raise BadRequest("give client=, service=, endpoint=, pod= or a window "
                             "(since= or from=)")
        try:
            limit = min(int(q.get("limit", 500)), 100_000)
        except ValueError:
            raise BadRequest("limit= is not a number") from None
        dq = DecisionQuery(client=q.get("client") or None, service=q.get("service") or None,
                           endpoint=q.get("endpoint") or None, pod=q.get("pod") or None,
                           node=q.get("node") or None, source=q.get("source") or None,
                           since_ns=lo, until_ns=hi, limit=limit)
        return self._read(lambda store: decisions_json(query_decisions(store, dq)[0]))

    def rules(self, q: dict[str, str]) -> Any:
        from natlens.collector.query.rules import RulesLater, rules_at
        from natlens.collector.report.shape import rules_json, rules_later

        if not q.get("node"):
            raise BadRequest("node= is required")
        try:
            at = time_ns(q["at"]) if q.get("at") else time.time_ns()
        except ValueError as e:
            raise BadRequest(str(e)) from None

        def answer(store: Store) -> Any:
            try:
                return rules_json(rules_at(store, q["node"], at))
            except RulesLater as e:
                raise BadRequest(rules_later(e.node, e.first_ns, e.at_ns)) from None
        return self._read(answer)

    def timeline(self, q: dict[str, str]) -> Any:
        """One report entry's endpoint shares over time, in bins of at least 100
        connections (the plot's): ``[{"from", "to", "after_gap", "counts"}]``."""
        from natlens.collector.analyze.sources import OLDER
        from natlens.collector.report.timeline import bins
        from natlens.collector.store.api import PortKey
        from natlens.collector.store.api import Window as StoreWindow
        from natlens.timeparse import rfc3339

        lo, hi = window(q)
        try:
            key = PortKey(q["node"], q["rules_version"], q["protocol"], q["vip"],
                          int(q["port"]))
        except (KeyError, ValueError):
            raise BadRequest("node=, rules_version=, protocol=, vip= and port= are "
                             "required") from None
        sources = (q.get("source") or OLDER, OLDER)

        def answer(store: Store) -> Any:
            per_minute: dict[int, dict[str, int]] = {}
            for m, ep, n in store.minute_counts(StoreWindow(None, lo, hi), key, sources):
                per_minute.setdefault(m, {})[ep] = n
            return [{"from": rfc3339(int(b.start_s * 1e9)), "to": rfc3339(int(b.end_s * 1e9)),
                     "after_gap": b.after_gap, "counts": b.counts}
                    for b in bins([(m / 1e9, c) for m, c in sorted(per_minute.items())])]
        return self._read(answer)

    def agents(self, q: dict[str, str]) -> Any:
        """Each agent's last batch: liveness as the store saw it."""
        from natlens.timeparse import rfc3339

        now = time.time_ns()
        return self._read(lambda store: [
            {"agent": a, "node": n, "last_batch": rfc3339(t), "seconds_ago":
             round((now - t) / 1e9, 1), "batches": k} for a, n, t, k in store.agent_activity()])

    def undeclared(self, q: dict[str, str]) -> Any:
        from natlens.collector.report.build import ReportQuery, build_report
        from natlens.collector.report.undeclared import undeclared

        lo, hi = window(q)
        rq = ReportQuery(node=q.get("node") or None, since_ns=lo, until_ns=hi)
        return self._read(lambda store: undeclared(build_report(store, rq)))


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
