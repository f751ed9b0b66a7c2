"""The eBPF filter's ring records (struct decision_rec, packed here as the kernel lays
them out) decode to the same decision rows the netlink source makes of the event."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.decode.ctnetlink import CtEvent, Tuple
from natlens.agent.decode.decision import to_decision
from natlens.agent.sources.ebpf_filter import RECORD, decode_record
from natlens.proto import natlens_pb2 as pb

# as the kernel's inet_ntop writes them (ipaddress writes ::ffff:0:0 as ::ffff:0.0.0.0)
v4 = st.ip_addresses(v=4).map(lambda a: socket.inet_ntop(socket.AF_INET, a.packed))
v6 = st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed))
port = st.integers(0, 65535)
u64 = st.integers(0, 2**63)


def raw(family: int, ip: str) -> bytes:
    return socket.inet_pton(family, ip).ljust(16, b"\0")


@given(ips=st.one_of(st.tuples(v4, v4, v4), st.tuples(v6, v6, v6)), sport=port, vport=port,
       eport=port, proto=st.sampled_from([6, 17, 132]), destroy=st.booleans(),
       ct_id=st.integers(0, 2**32 - 1), zone=st.integers(0, 65535),
       counters=st.tuples(u64, u64, u64, u64), start=u64, length=st.integers(0, 10**12),
       boot=st.integers(0, 2**62), offset=st.integers(0, 2**62))
def test_record_decodes_like_the_netlink_event(
        ips: tuple[str, str, str], sport: int, vport: int, eport: int, proto: int,
        destroy: bool, ct_id: int, zone: int, counters: tuple[int, int, int, int],
        start: int, length: int, boot: int, offset: int) -> None:
    client, vip, ep = ips
    fam = socket.AF_INET6 if ":" in client else socket.AF_INET
    stop = start + length if destroy else 0
    data = RECORD.pack(boot, int(destroy), fam, raw(fam, client), raw(fam, vip),
                       socket.htons(sport), socket.htons(vport), proto, raw(fam, ep),
                       raw(fam, client), socket.htons(eport), socket.htons(sport), proto,
                       *counters, start, stop, ct_id, zone)
    ev = CtEvent("destroy" if destroy else "new", Tuple(client, vip, proto, sport, vport),
                 Tuple(ep, client, proto, eport, sport), ct_id, zone, *counters, start, stop)
    event = pb.EVENT_DESTROY if destroy else pb.EVENT_NEW
    assert decode_record(data, offset) == to_decision(ev, event, pb.SOURCE_EBPF, boot + offset)
