"""The agent's ``/metrics`` (prometheus-client): what it has delivered, what waits, and
every event it knows it did not see, read from the agent's own state at each scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from natlens.proto.names import source_name


class _AgentCollector(Collector):
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        a = self.agent
        sh = a.shipper
        yield GaugeMetricFamily("natlens_agent_batches_pending",
                                "Batches sent or waiting, not yet acknowledged", sh.pending)
        yield GaugeMetricFamily("natlens_agent_spool_bytes", "Bytes in the disk spool",
                                sh.spool.bytes if sh.spool is not None else 0)
        yield CounterMetricFamily("natlens_agent_send_errors", "Failed streams to the "
                                  "collector (each retried with backoff)", sh.send_errors)
        yield CounterMetricFamily("natlens_agent_batches_acked", "Batches the collector "
                                  "acknowledged", sh.acked)
        yield CounterMetricFamily("natlens_agent_rules_reads", "Reads of the node's rules "
                                  "(skipped while nf_tables' generation stays put)",
                                  a.rules.reads)
        if a.rules.parses is not None:
            yield CounterMetricFamily("natlens_agent_rules_parses", "Reads of the node's "
                                      "rules that found them changed and parsed them",
                                      a.rules.parses)
        events = CounterMetricFamily("natlens_agent_events", "Conntrack events read, by "
                                     "kind", labels=["kind"])
        for kind, n in sorted(a.source.stats.items() if a.source else ()):
            events.add_metric([kind], n)
        yield events
        lost = CounterMetricFamily("natlens_agent_lost_events", "Events the agent knows it "
                                   "did not see or keep, by source and reason",
                                   labels=["source", "reason"])
        for (source, reason), n in sorted(a.sink.lost_totals.items()):
            lost.add_metric([source, reason], n)
        if a.aggregator.not_kept:
            lost.add_metric([source_name(a.source_pb),
                             "spool-full: counted, not kept per connection"],
                            a.aggregator.not_kept)
        yield lost


def agent_registry(agent: Any) -> CollectorRegistry:
    r = CollectorRegistry()
    r.register(_AgentCollector(agent))
    return r
