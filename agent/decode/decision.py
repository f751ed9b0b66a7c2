"""A conntrack event becomes a decision row (packed into the wire's columns per batch)."""

from __future__ import annotations

from natlens.agent.decode.ctnetlink import PROTOCOLS, CtEvent
from natlens.agent.decode.pairing import Pair
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow


def to_decision(ev: CtEvent, event: pb.Event, source: pb.Source, now_ns: int) -> DecisionRow:
    """``now_ns`` is used when conntrack timestamps are off (start_ns == 0)."""
    o, r = ev.orig, ev.reply
    proto = PROTOCOLS.get(o.proto, str(o.proto))
    if event != pb.EVENT_DESTROY:
        return DecisionRow(ev.start_ns or now_ns, proto, o.src, o.sport, o.dst, o.dport,
                           r.src, r.sport, ev.ct_id, ev.zone, source, event)
    duration = ev.stop_ns - ev.start_ns if ev.start_ns and ev.stop_ns >= ev.start_ns else 0
    return DecisionRow(ev.start_ns or now_ns, proto, o.src, o.sport, o.dst, o.dport,
                       r.src, r.sport, ev.ct_id, ev.zone, source, event, ev.orig_packets,
                       ev.orig_bytes, ev.reply_packets, ev.reply_bytes, duration)


def from_pair(p: Pair) -> DecisionRow:
    """A decision seen in packets (live capture and capture files alike)."""
    return DecisionRow(p.time_ns, p.protocol, p.client, p.client_port, p.vip, p.vip_port,
                       p.endpoint, p.endpoint_port, source=pb.SOURCE_PCAP, event=pb.EVENT_NEW)
