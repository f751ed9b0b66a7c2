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


# auto's order: (source, its name in the fallback line, the next one's). netlink is last
# and has no fallback: it needs nothing but a netlink socket.
AUTO = (("hook", "hook", "trying ebpf"), ("ebpf", "eBPF", "using netlink"))


def build(cfg: AgentConfig, name: str, rules: RulesWatcher) -> Source:
    if name == "pcap":
        return CaptureSource(cfg.netns, cfg.rcvbuf, rules.vips)
    if name == "hook":
        return HookSource(cfg.node, cfg.netns, cfg.pin_root, cfg.records, cfg.sample,
                          cfg.counters_interval, cfg.batch_age, cfg.ring_bytes, cfg.closes,
                          cfg.accounting)
    if name == "ebpf":
        return EbpfSource(cfg.node, cfg.netns, cfg.pin_root, cfg.records, cfg.sample,
                          cfg.counters_interval, rcvbuf=cfg.rcvbuf,
                          accounting=cfg.accounting, batch_age=cfg.batch_age)
    return NetlinkSource(cfg.netns, cfg.rcvbuf, cfg.accounting, cfg.batch_age)


def open_source(cfg: AgentConfig, rules: RulesWatcher) -> Source:
    """The configured source, opened (privileged set-up done)."""
    if cfg.source == "auto":
        for name, said, next_step in AUTO:
            source = build(cfg, name, rules)
            try:
                source.open()
                return source
            except BpfUnavailable as e:
                log.warning("source auto: %s unavailable, %s: %s", said, next_step, e)
    source = build(cfg, "netlink" if cfg.source == "auto" else cfg.source, rules)
    source.open()
    return source
