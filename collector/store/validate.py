"""What a batch must be to be stored, whatever the backend: checked before any write,
so a bad batch is refused whole (``BatchRejected``)."""

from __future__ import annotations

from typing import Any

from natlens.collector.store.api import BatchRejected
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import ColumnsError, check
from natlens.proto.names import EVENTS, SOURCES

# The largest count a store keeps: SQLite's INTEGER and PostgreSQL's BIGINT are signed.
# The wire's uint64 counts above it are no real node's (2^63 bytes is 8 EiB).
BIGGEST = 2**63 - 1
# How far apart the decisions of one batch may be: an agent's batch spans seconds, a
# pcap import's the capture's minutes. Wider is a clock gone wrong, and would make the
# PostgreSQL store a day partition per distinct day.
MAX_SPAN_NS = 31 * 86_400 * 10**9
COUNTER_FIELDS = ("connections", "bytes", "packets", "total_connections", "total_closed",
                  "total_orig_packets", "total_orig_bytes", "total_reply_packets",
                  "total_reply_bytes", "total_duration_ns")


def validate(batch: pb.Batch) -> None:
    if not batch.agent_id or not batch.boot_id or not batch.node:
        raise BatchRejected("batch without agent_id, boot_id or node")
    if batch.seq == 0 or batch.seq > BIGGEST:
        raise BatchRejected("batch without a sequence number (1 to 2^63-1)")
    for r in batch.rules:
        if not r.hash or not r.mode:
            raise BatchRejected("rule snapshot without hash or mode")
    try:
        n = check(batch.columns)
    except ColumnsError as e:
        raise BatchRejected(str(e)) from None
    if n and max(batch.columns.client_port) > 65535:
        raise BatchRejected("decision with a port above 65535")
    if n:
        lo, hi = min(batch.columns.time_ns), max(batch.columns.time_ns)
        if lo < 0:
            raise BatchRejected("decision with a time before 1970")
        if hi - lo > MAX_SPAN_NS:
            raise BatchRejected(f"decisions of one batch {(hi - lo) / 86_400e9:.0f} days apart "
                                "(at most 31): a clock that jumped?")
    cols = batch.columns
    if any(max(col, default=0) > BIGGEST for col in (
            cols.orig_packets, cols.orig_bytes, cols.reply_packets, cols.reply_bytes)):
        raise BatchRejected("decision with a count above 2^63-1")
    for k in batch.columns.keys:
        check_key((k.protocol, k.vip, k.vip_port, k.endpoint_ip, k.endpoint_port, k.source,
                   k.event))
    for c in batch.counters:
        if not c.epoch or not c.vip or not c.endpoint_ip or not c.protocol:
            raise BatchRejected("counter without epoch, vip, endpoint or protocol")
        if c.vip_port > 65535 or c.endpoint_port > 65535:
            raise BatchRejected("counter with a port above 65535")
        if max(getattr(c, f) for f in COUNTER_FIELDS) > BIGGEST:
            raise BatchRejected("counter with a count above 2^63-1")
    for lost in batch.lost:
        if max(lost.count, lost.recovered, lost.total) > BIGGEST:
            raise BatchRejected("lost events with a count above 2^63-1")


def check_key(raw: tuple[Any, ...]) -> None:
    """A decision key (protocol, VIP, port, endpoint IP, port, source, event)."""
    proto, vip, vport, eip, eport, src, ev = raw
    if ev not in EVENTS or src not in SOURCES:
        raise BatchRejected(f"decision with unknown event {ev} or source {src}")
    if not vip or not eip or not proto:
        raise BatchRejected("decision without vip, endpoint or protocol")
    if vport > 65535 or eport > 65535:
        raise BatchRejected("decision with a port above 65535")


def model_json(r: pb.RuleSnapshot) -> dict[str, Any]:
    """A snapshot's declared model as the store keeps it (``rules parse``'s JSON)."""
    services = []
    for s in r.services:
        services.append({
            "service": s.service, "kind": s.kind, "vip": s.vip, "port": s.port,
            "protocol": s.protocol, "affinity": s.affinity, "policy": s.policy, "chain": s.chain,
            "scheduler": s.scheduler or "random",
            "endpoints": [{"endpoint": e.endpoint, "probability": e.probability,
                           "chain": e.chain} for e in s.endpoints]})
    return {"mode": r.mode, "hash": r.hash, "services": services}
