"""A conntrack event becomes a decision row (packed into the wire's columns per batch).

``row`` is the one place that says how: the netlink decoder's events, its raw values
and the eBPF filter's ring records (those two skip building an event) all go through
it."""

from __future__ import annotations

from natlens.agent.decode.ctnetlink import PROTOCOLS, CtEvent, Values, address
from natlens.agent.decode.pairing import Pair
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow

_DESTROY = pb.EVENT_DESTROY


def row(proto: int, client: str, client_port: int, vip: str, vip_port: int, endpoint: str,
        endpoint_port: int, ct_id: int, zone: int, source: pb.Source, event: pb.Event,
        start_ns: int, stop_ns: int, now_ns: int, orig_packets: int = 0, orig_bytes: int = 0,
        reply_packets: int = 0, reply_bytes: int = 0) -> DecisionRow:
    """``now_ns`` is used when conntrack timestamps are off (``start_ns`` 0); counters
    and the duration are a DESTROY's only."""
    name = PROTOCOLS.get(proto) or str(proto)
    if event != _DESTROY:
        return DecisionRow(start_ns or now_ns, name, client, client_port, vip, vip_port,
                           endpoint, endpoint_port, ct_id, zone, source, event)
    duration = stop_ns - start_ns if start_ns and stop_ns >= start_ns else 0
    return DecisionRow(start_ns or now_ns, name, client, client_port, vip, vip_port,
                       endpoint, endpoint_port, ct_id, zone, source, event, orig_packets,
                       orig_bytes, reply_packets, reply_bytes, duration)


def to_decision(ev: CtEvent, event: pb.Event, source: pb.Source, now_ns: int) -> DecisionRow:
    o, r = ev.orig, ev.reply
    return row(o.proto, o.src, o.sport, o.dst, o.dport, r.src, r.sport, ev.ct_id, ev.zone,
               source, event, ev.start_ns, ev.stop_ns, now_ns, ev.orig_packets,
               ev.orig_bytes, ev.reply_packets, ev.reply_bytes)


def from_values(v: Values, event: pb.Event, source: pb.Source, now_ns: int) -> DecisionRow:
    """``to_decision`` for ``ctnetlink.event_values``, with no event built between."""
    (_, osrc, odst, proto, osport, odport, rsrc, rsport, ct_id, zone, op, ob, rp, rb, ts0,
     ts1) = v
    return row(proto, address(osrc), osport, address(odst), odport, address(rsrc), rsport,
               ct_id, zone, source, event, ts0, ts1, now_ns, op, ob, rp, rb)


def from_pair(p: Pair) -> DecisionRow:
    """A decision seen in packets (live capture and capture files alike)."""
    return DecisionRow(p.time_ns, p.protocol, p.client, p.client_port, p.vip, p.vip_port,
                       p.endpoint, p.endpoint_port, source=pb.SOURCE_PCAP, event=pb.EVENT_NEW)
