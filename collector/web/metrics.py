"""``/metrics``: what the collector has ingested, in Prometheus' format (prometheus-client).

Counted as batches are stored (not re-queried from the database at each scrape, which
would cost a full scan on a months-old store). A service port is labelled as
Kubernetes names it (``namespace``, ``service``, ``port``; a VIP:port no rule names is
``service="VIP:PORT"``), with the ``node`` that decided. Label sets are bounded: past
``max_series`` distinct (service port, node, endpoint) sets, new ones are counted under
``other``, so one churning service cannot blow up the scraper's memory. Decisions and
bytes carry the source that saw them: a node watched by several sources at once
(``agent --source all``) shows each, so sum over one source, not over all.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from operator import attrgetter

from prometheus_client import CollectorRegistry, Counter, Gauge

from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import column
from natlens.proto.names import SOURCES, endpoint_key

OTHER = "other"
SERVICE_LABELS = ("namespace", "service", "port")


def split_service(name: str) -> tuple[str, str, str]:
    """``NS/NAME:PORT`` as (namespace, service, port); anything else is the service."""
    ns, slash, rest = name.partition("/")
    if not slash:
        return "", name, ""
    svc, _, port = rest.rpartition(":")
    return (ns, svc, port) if svc else (ns, rest, "")
_KEY = attrgetter("vip", "vip_port", "protocol", "endpoint_ip", "endpoint_port", "source",
                  "event")


Key = tuple[str, int, str, str, int, pb.Source, pb.Event]


def per_key(batch: pb.Batch) -> tuple[dict[Key, int], dict[Key, int], int]:
    """Decisions per key, bytes of closed connections per key, and the newest decision
    time. Counted in C first (a batch holds thousands of decisions over a few keys), so
    Python works once per key (BENCHMARKS.md)."""
    cols = batch.columns
    tally: Tally[Key] = Tally()
    closed: dict[Key, int] = {}
    if not cols.time_ns:
        return tally, closed, 0
    keys = [_KEY(k) for k in cols.keys]
    for i, k in Tally(cols.key_index).items():
        tally[keys[i]] += k
    if any(k.event == pb.EVENT_DESTROY for k in cols.keys):
        n = len(cols.time_ns)
        for i, ob, rb in zip(cols.key_index, column(cols, "orig_bytes", n),
                             column(cols, "reply_bytes", n), strict=True):
            if keys[i][6] == pb.EVENT_DESTROY:
                closed[keys[i]] = closed.get(keys[i], 0) + ob + rb
    return tally, closed, max(cols.time_ns)


class IngestMetrics:
    def __init__(self, size: Callable[[], int], max_series: int = 10_000) -> None:
        """``size``: the store's size in bytes, read at each scrape."""
        self.registry = CollectorRegistry()
        self.max_series = max_series
        self._series: set[tuple[str, str, str]] = set()
        self._names: dict[str, dict[tuple[str, int, str], str]] = {}  # node → VIP key → name
        self._lock = threading.Lock()
        self._lost_totals: dict[tuple[str, str, str, str], int] = {}
        r = self.registry
        labels = [*SERVICE_LABELS, "node", "endpoint", "source"]
        self.decisions = Counter("natlens_decisions", "DNAT decisions stored (connections; "
                                 "sampled ones scaled back)", labels, registry=r)
        self.bytes = Counter("natlens_bytes", "Bytes both ways of closed connections", labels,
                             registry=r)
        self.lost = Counter("natlens_lost_events", "Events an agent knows it did not see",
                            ["node", "source", "reason"], registry=r)
        self.batches = Counter("natlens_batches", "Batches received", ["result"], registry=r)
        self.lag = Gauge("natlens_ingest_lag_seconds", "Receive time minus the newest "
                         "decision time in the node's last batch", ["node"], registry=r)
        self.series_dropped = Counter("natlens_metrics_series_overflow",
                                      "Samples counted under 'other' because of "
                                      "--metrics-max-series", registry=r)
        db_size = Gauge("natlens_database_bytes", "Size of the store (the SQLite file and "
                        "its WAL)", registry=r)
        db_size.set_function(lambda: float(size()))

    def _labels(self, service: str, node: str, endpoint: str) -> tuple[str, ...]:
        key = (service, node, endpoint)
        if key not in self._series:
            if len(self._series) >= self.max_series:
                self.series_dropped.inc()
                return "", OTHER, "", OTHER, OTHER
            self._series.add(key)
        return (*split_service(service), node, endpoint)

    def _service(self, node: str, vip: str, port: int, proto: str) -> str:
        return self._names.get(node, {}).get((vip, port, proto), endpoint_key(vip, port))

    def observe(self, batch: pb.Batch, result: str) -> None:
        """After the store's answer: ``stored``, ``duplicate`` or ``rejected``."""
        self.batches.labels(result).inc()
        if result != "stored":
            return
        with self._lock:
            for r in batch.rules:
                self._names[batch.node] = {(s.vip, s.port, s.protocol): s.service
                                           for s in r.services}
            rate = max(batch.sample_rate, 1)
            tally, closed, newest = per_key(batch)
            for key, k in tally.items():
                vip, vport, proto, eip, eport, source, event = key
                if source == pb.SOURCE_EBPF and event != pb.EVENT_RECOVERED:
                    continue  # counted in the kernel: its counters below
                if event not in (pb.EVENT_NEW, pb.EVENT_RECOVERED, pb.EVENT_DESTROY):
                    continue
                svc = self._service(batch.node, vip, vport, proto)
                labels = (*self._labels(svc, batch.node, endpoint_key(eip, eport)),
                          SOURCES.get(source, "unknown"))
                if event == pb.EVENT_DESTROY:
                    self.bytes.labels(*labels).inc(closed.get(key, 0))
                else:
                    self.decisions.labels(*labels).inc(k * rate if event == pb.EVENT_NEW
                                                       else k)
            for c in batch.counters:
                svc = self._service(batch.node, c.vip, c.vip_port, c.protocol)
                pair = self._labels(svc, batch.node, endpoint_key(c.endpoint_ip, c.endpoint_port))
                src = SOURCES.get(c.source, "ebpf")
                self.decisions.labels(*pair, src).inc(c.connections)
                self.bytes.labels(*pair, src).inc(c.bytes)
            for lo in batch.lost:
                lost_source = SOURCES.get(lo.source, "unknown")
                n = lo.count
                if lo.epoch:  # a running total within the epoch, as the store counts it
                    lk = (batch.node, lo.epoch, lost_source, lo.reason)
                    n = max(lo.total - self._lost_totals.get(lk, 0), 0)
                    self._lost_totals[lk] = max(lo.total, self._lost_totals.get(lk, 0))
                self.lost.labels(batch.node, lost_source, lo.reason).inc(n)
            if newest:
                self.lag.labels(batch.node).set(max(time.time_ns() - newest, 0) / 1e9)
