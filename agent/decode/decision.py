"""A conntrack event becomes a Decision record (the wire format in proto/)."""

from __future__ import annotations

from natlens.agent.decode.ctnetlink import PROTOCOLS, CtEvent
from natlens.proto import natlens_pb2 as pb


def to_decision(ev: CtEvent, event: pb.Event, source: pb.Source, now_ns: int) -> pb.Decision:
    """``now_ns`` is used when conntrack timestamps are off (start_ns == 0)."""
    d = pb.Decision(
        time_ns=ev.start_ns or now_ns,
        protocol=PROTOCOLS.get(ev.orig.proto, str(ev.orig.proto)),
        client_ip=ev.orig.src, client_port=ev.orig.sport,
        vip=ev.orig.dst, vip_port=ev.orig.dport,
        endpoint_ip=ev.reply.src, endpoint_port=ev.reply.sport,
        ct_id=ev.ct_id, zone=ev.zone, source=source, event=event,
    )
    if event == pb.EVENT_DESTROY:
        d.orig_packets, d.orig_bytes = ev.orig_packets, ev.orig_bytes
        d.reply_packets, d.reply_bytes = ev.reply_packets, ev.reply_bytes
        if ev.start_ns and ev.stop_ns >= ev.start_ns:
            d.duration_ns = ev.stop_ns - ev.start_ns
    return d
