"""Which source an agent runs: ``--source`` as given, or ``auto``'s choice.

``auto`` tries the hook source, then the eBPF socket filter, then netlink, each step
with one log line saying why; ``hook`` or ``ebpf`` given explicitly fails with that
reason instead.
"""

from __future__ import annotations

import logging

from natlens.agent.config import AgentConfig
from natlens.agent.rules.watcher import RulesWatcher
from natlens.agent.sources.capture_live import CaptureSource
from natlens.agent.sources.ebpf import EbpfSource
from natlens.agent.sources.ebpf_filter import BpfUnavailable
from natlens.agent.sources.hook import HookSource
from natlens.agent.sources.netlink import NetlinkSource
from natlens.agent.sources.stage import Source

log = logging.getLogger("natlens.agent")


def open_source(cfg: AgentConfig, rules: RulesWatcher) -> Source:
    """The configured source, opened (privileged set-up done)."""
    source: Source
    if cfg.source == "pcap":
        source = CaptureSource(cfg.netns, cfg.rcvbuf, rules.vips)
        source.open()
        return source
    if cfg.source in ("hook", "auto"):
        source = HookSource(cfg.node, cfg.netns, cfg.pin_root, cfg.records, cfg.sample,
                            cfg.counters_interval, cfg.batch_age, cfg.ring_bytes,
                            cfg.closes, cfg.accounting)
        try:
            source.open()
            return source
        except BpfUnavailable as e:
            if cfg.source == "hook":
                raise
            log.warning("source auto: hook unavailable, trying ebpf: %s", e)
    if cfg.source in ("ebpf", "auto"):
        source = EbpfSource(cfg.node, cfg.netns, cfg.pin_root, cfg.records, cfg.sample,
                            cfg.counters_interval, rcvbuf=cfg.rcvbuf,
                            accounting=cfg.accounting, batch_age=cfg.batch_age)
        try:
            source.open()
            return source
        except BpfUnavailable as e:
            if cfg.source == "ebpf":
                raise
            log.warning("source auto: eBPF unavailable, using netlink: %s", e)
    source = NetlinkSource(cfg.netns, cfg.rcvbuf, cfg.accounting, cfg.batch_age)
    source.open()
    return source
