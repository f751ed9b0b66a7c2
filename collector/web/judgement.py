"""``/metrics``: the report's judgement as gauges, so Prometheus can alert on skew.

Every scrape older than ``refresh`` seconds rebuilds the report over the last ``window``
(a store opened read-only for it, as the dashboard does) and publishes, per service
port and node, the rules in force now: each endpoint's declared and observed share and
connections, the test's Holm-adjusted p-value, the verdict (one series per verdict,
1 for the one that holds) and the distance, plus the undeclared endpoints. The label
sets are bounded: ``services`` picks which service ports (``fnmatch`` patterns on
``NS/NAME`` or ``NS/NAME:PORT``), ``max_ports`` caps how many, and what the cap leaves
out is counted. Every replica of a PostgreSQL store publishes the same judgement.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from natlens.collector.store.api import Store
from natlens.collector.web.metrics import SERVICE_LABELS, split_service

log = logging.getLogger("natlens.collector.metrics")

VERDICTS = ("consistent", "skewed", "insufficient-data", "undeclared")
_PORT = [*SERVICE_LABELS, "node"]
_ENDPOINT = [*_PORT, "endpoint", "pod"]


def selected(service: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``NS/NAME:PORT`` matches one of the patterns (none: every service)."""
    base = service.rpartition(":")[0] or service
    return not patterns or any(fnmatch.fnmatchcase(service, p) or fnmatch.fnmatchcase(base, p)
                               for p in patterns)


def current(entries: Iterable[dict[str, Any]],
            in_force: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per (service port, node): the one judged under the rules in force on
    the node now (``in_force``: node → rules version), else the one with most
    connections, so a rules change in the window does not leave two series of a port."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        key = (e["service"], e["node"])
        rank = (e["rules_version"] == in_force.get(e["node"]), e.get("total") or 0)
        old = best.get(key)
        if old is None or rank > (old["rules_version"] == in_force.get(old["node"]),
                                  old.get("total") or 0):
            best[key] = e
    return list(best.values())


def families(report: dict[str, Any], patterns: tuple[str, ...], max_ports: int,
             window_s: float, in_force: dict[str, str] | None = None,
             ) -> tuple[list[GaugeMetricFamily], int]:
    """The gauges of one report; how many service ports the cap left out."""
    declared = GaugeMetricFamily("natlens_endpoint_declared_share", "Share of new "
                                 "connections the node's rules give the endpoint", labels=_ENDPOINT)
    observed = GaugeMetricFamily("natlens_endpoint_observed_share", "Share of the window's "
                                 "connections the endpoint got", labels=_ENDPOINT)
    conns = GaugeMetricFamily("natlens_endpoint_connections", "Connections to the endpoint "
                              "in the window", labels=_ENDPOINT)
    undeclared = GaugeMetricFamily("natlens_undeclared_connections", "Connections in the "
                                   "window to an endpoint the rules do not declare for the "
                                   "service port", labels=[*_PORT, "endpoint"])
    p_value = GaugeMetricFamily("natlens_service_p_value", "Goodness-of-fit p-value of the "
                                "window, Holm-adjusted over the report's tests", labels=_PORT)
    verdict = GaugeMetricFamily("natlens_service_verdict", "1 for the verdict that holds",
                                labels=[*_PORT, "verdict"])
    distance = GaugeMetricFamily("natlens_service_distance", "Total variation distance "
                                 "between declared and observed shares", labels=_PORT)
    total = GaugeMetricFamily("natlens_service_connections", "Connections in the window",
                              labels=_PORT)
    window = GaugeMetricFamily("natlens_metrics_window_seconds", "The window the judgement "
                               "gauges cover", value=window_s)
    entries = sorted((e for e in current(report.get("services", []), in_force or {})
                      if selected(e["service"], patterns)),
                     key=lambda e: (e["service"], e["node"]))
    dropped = max(len(entries) - max_ports, 0)
    for e in entries[:max_ports]:
        port = [*split_service(e["service"]), e["node"]]
        n = e.get("total") or 0
        for ep in e["endpoints"]:
            labels = [*port, ep["endpoint"], ep.get("pod") or ""]
            declared.add_metric(labels, ep["declared"])
            observed.add_metric(labels, ep["observed"] / n if n else 0.0)
            conns.add_metric(labels, ep["observed"])
        for u in e.get("undeclared", []):
            undeclared.add_metric([*port, u["endpoint"]], u["observed"])
        test = e.get("test") or {}
        if test.get("p_value_holm") is not None:
            p_value.add_metric(port, test["p_value_holm"])
        for v in (*VERDICTS, *([e["verdict"]] if e["verdict"] not in VERDICTS else [])):
            verdict.add_metric([*port, v], 1.0 if e["verdict"] == v else 0.0)
        if e.get("tvd") is not None:
            distance.add_metric(port, e["tvd"])
        total.add_metric(port, n)
    return [declared, observed, conns, undeclared, p_value, verdict, distance, total,
            window], dropped


class JudgementCollector(Collector):
    def __init__(self, open_reader: Callable[[], Store], window_s: float = 900.0,
                 services: tuple[str, ...] = (), max_ports: int = 1000,
                 refresh: float = 15.0, alpha: float = 0.001) -> None:
        self.open_reader, self.window_s, self.services = open_reader, window_s, services
        self.max_ports, self.refresh, self.alpha = max_ports, refresh, alpha
        self._lock = threading.Lock()
        self._at = 0.0
        self._cached: list[GaugeMetricFamily] = []
        self.dropped_total = 0
        self.errors = 0

    def _report(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The window's report, and the rules version in force on each node now."""
        from natlens.collector.report.build import ReportQuery, build_report  # scipy: lazily

        store = self.open_reader()
        try:
            now = time.time_ns()
            rep = build_report(store, ReportQuery(since_ns=now - int(self.window_s * 1e9),
                                                  until_ns=now, alpha=self.alpha))
            in_force = {n: snap.hash for n in store.nodes()
                        if (snap := store.rules_in_force(n, now)) is not None}
            return rep, in_force
        finally:
            store.close()

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if time.monotonic() - self._at >= self.refresh:
                try:
                    rep, in_force = self._report()
                    self._cached, dropped = families(rep, self.services, self.max_ports,
                                                     self.window_s, in_force)
                    self.dropped_total += dropped
                except Exception as e:  # a scrape answers with what it has
                    self.errors += 1
                    log.error("metrics: judgement not refreshed: %s", e)
                self._at = time.monotonic()
            yield from self._cached
            yield CounterMetricFamily("natlens_metrics_services_dropped", "Service ports "
                                      "left out of the judgement gauges by "
                                      "--metrics-max-services, summed over refreshes",
                                      value=self.dropped_total)
            yield CounterMetricFamily("natlens_metrics_judgement_errors", "Refreshes of the "
                                      "judgement gauges that failed", value=self.errors)
