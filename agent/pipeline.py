"""The agent as wiring: config → source → sink → batcher → shipper, beside the rules
watcher.

Threads: the source's loop (``Source.run``, on the calling thread), the rules watcher
and the shipper. Set-up runs in the order privileges demand: the source and the rules
watcher open their kernel objects while the agent still holds every capability, then
all but what they need are dropped, before any other thread starts (capabilities
belong to threads). Stopping lets the source drain, flushes the last batch and waits
for the collector's acknowledgements.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from natlens.agent.config import AgentConfig
from natlens.agent.health.metrics import agent_registry
from natlens.agent.health.server import Health, serve
from natlens.agent.privileges import describe, keep_only
from natlens.agent.rules.model import DeclaredModel
from natlens.agent.rules.watcher import RulesWatcher
from natlens.agent.ship.batch import Batcher
from natlens.agent.ship.client import Shipper
from natlens.agent.ship.sink import BatchSink
from natlens.agent.ship.spool import Aggregator, Spool
from natlens.agent.sources.stage import Source
from natlens.proto import natlens_pb2 as pb
from natlens.security import channel_credentials

log = logging.getLogger("natlens.agent")


class Agent:
    def __init__(self, cfg: AgentConfig, source: Source | None = None,
                 read: Callable[[str | None], DeclaredModel] | None = None) -> None:
        """``source`` and ``read`` (the rules reader) replace the configured ones in
        tests that run the pipeline without a kernel to watch."""
        self.cfg = cfg
        self.batcher = Batcher(cfg.id, cfg.node, self._submit, cfg.batch_size,
                               cfg.batch_age, sample_rate=cfg.sample)
        self.aggregator = Aggregator(f"spool-{self.batcher.boot_id}")
        self.shipper = Shipper(cfg.collector,
                               credentials=channel_credentials(cfg.tls) if cfg.tls else None,
                               token=cfg.token, server_name=cfg.tls_server_name,
                               spool=Spool(cfg.spool, cfg.spool_max_bytes) if cfg.spool
                               else None, degrade=self._degrade)
        self.health = Health()
        self.health.reason = "the node's rules have not been read"
        self.sink = BatchSink(self.batcher, self.health)
        self.rules = RulesWatcher(cfg.netns, cfg.rules_interval, self.batcher.add_rules,
                                  read, on_read=self._rules_read)
        self.source = source
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def source_pb(self) -> pb.Source:
        return self.source.proto if self.source is not None else pb.SOURCE_UNSPECIFIED

    def run(self) -> int:
        if self.source is None:
            from natlens.agent.sources.choose import open_source  # loads bcc when asked

            self.source = open_source(self.cfg, self.rules)
        else:
            self.source.open()
        self.rules.open()
        if not self.cfg.keep_privileges:
            kept = keep_only(self.source.capabilities()
                             | ({"CAP_SYS_ADMIN"} if self.cfg.netns else set()))
            log.info("privileges: %s", describe(kept))
        self._start_serving()
        if not self.rules.read_now():
            log.error("rules: starting without a declared model; decisions are kept and "
                      "will be judged once the rules can be read")
        self.rules.start(self._stop)
        self.source.run(self.sink, self._stop)
        return self._finish()

    def _rules_read(self) -> None:
        self.health.ready = True

    def _start_serving(self) -> None:
        """Health/metrics endpoint and the shipper: after privileges are dropped."""
        if self.cfg.health_listen:
            host, _, port = self.cfg.health_listen.rpartition(":")
            srv = serve(self.health, host, int(port), agent_registry(self))
            log.info("health: /healthz, /readyz and /metrics on %s:%d",
                     *srv.server_address[:2])
        self.shipper.start()

    def _submit(self, batch: pb.Batch) -> None:
        self.shipper.submit(batch)

    def _degrade(self, batch: pb.Batch) -> pb.Batch:
        """The spool is full: keep counting, in aggregate, what no longer fits per
        connection (said in the batch's LostEvents and once in the log)."""
        if not self.aggregator.not_kept:
            log.error("spool full (%s bytes): decisions are now counted in aggregate, not "
                      "kept per connection, until the collector catches up",
                      self.cfg.spool_max_bytes)
        return self.aggregator.aggregate(batch)

    def _finish(self) -> int:
        """Flush, wait for the collector's acknowledgements, say what was seen."""
        self.batcher.flush()
        ok = self.shipper.drain(self.cfg.drain_timeout)
        if not ok:
            log.error("shutdown: %d batches not acknowledged by %s within %.0fs",
                      self.shipper.pending, self.cfg.collector, self.cfg.drain_timeout)
        self.shipper.stop()
        stats = self.source.stats if self.source is not None else {}
        log.info("stopped: %s; rules read %d times, parsed %s", ", ".join(
            f"{k}={v}" for k, v in stats.items()), self.rules.reads, self.rules.parses)
        return 0 if ok else 1
