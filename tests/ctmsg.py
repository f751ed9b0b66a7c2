"""ctnetlink event messages for the decoder's and the eBPF filter's tests, made from
messages the kernel sent (``tests/fixtures/ctnetlink``, recorded by its ``capture.py``).

A message is a kernel message of the same family, protocol, event kind and zone-ness
with its values replaced. Where each value sits is learnt from the captures: every
attribute leaf (found by netlink's generic length/type framing) is matched against what
``conntrack -E -o xml`` printed for the same message, and a leaf is a field when it
holds that field's value in every capture that has it. Nothing here knows an attribute
number or a ctnetlink layout, so a wrong constant in the decoder (or the eBPF program)
cannot agree with these messages by construction: it fails against the kernel's bytes.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ctnetlink"
BODY = 20  # nlmsghdr (16) and nfgenmsg (4): the attributes start here
NESTED = 0x8000
Path_ = tuple[int, ...]  # attribute types from the top level down to a leaf


@dataclass(frozen=True)
class Captured:
    name: str
    data: bytes
    said: dict[str, Any]  # what conntrack(8) printed for it (events.json)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.said["orig"]["src"]).version

    @property
    def key(self) -> tuple[int, int, str, bool]:
        return (self.family, self.said["orig"]["proto"], self.said["kind"],
                bool(self.said["zone"]))


def attributes(data: bytes, start: int = BODY, end: int | None = None
               ) -> Iterator[tuple[int, int, int]]:
    """(type, offset of the value, length of the value) of each attribute at one level."""
    off, end = start, len(data) if end is None else end
    while off + 4 <= end:
        length, typ = struct.unpack_from("=HH", data, off)
        if length < 4 or off + length > end:
            raise ValueError(f"attribute at {off} has bad length {length}")
        yield typ, off + 4, length - 4
        off += (length + 3) & ~3


def leaves(data: bytes, start: int = BODY, end: int | None = None, path: Path_ = ()
           ) -> Iterator[tuple[Path_, int, int]]:
    """(path, offset, length) of every leaf: nested attributes carry the NESTED flag."""
    for typ, off, n in attributes(data, start, end):
        if typ & NESTED:
            yield from leaves(data, off, off + n, (*path, typ & ~NESTED))
        else:
            yield (*path, typ), off, n


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def expected(c: Captured) -> dict[str, bytes]:
    """Each field's bytes as conntrack(8) read the message (timestamps aside)."""
    o, r = c.said["orig"], c.said["reply"]
    out = {"client": _ip(o["src"]), "vip": _ip(o["dst"]), "endpoint": _ip(r["src"]),
           "proto": bytes([o["proto"]]), "sport": struct.pack(">H", o["sport"]),
           "vport": struct.pack(">H", o["dport"]), "eport": struct.pack(">H", r["sport"]),
           "id": struct.pack(">I", c.said["id"])}
    assert _ip(r["dst"]) == out["client"] and r["dport"] == o["sport"]
    if c.said["zone"]:
        out["zone"] = struct.pack(">H", c.said["zone"])
    if "packets" in o:
        out |= {"opackets": struct.pack(">Q", o["packets"]),
                "obytes": struct.pack(">Q", o["bytes"]),
                "rpackets": struct.pack(">Q", r["packets"]),
                "rbytes": struct.pack(">Q", r["bytes"])}
    return out


# How many leaves of one message hold each field: the client's address and port are in
# both tuples (source of the original, destination of the reply), and so is the protocol.
COPIES = {"client": 2, "sport": 2, "proto": 2}


@functools.cache
def captured() -> dict[str, Captured]:
    doc = json.loads((FIXTURES / "events.json").read_text())
    return {name: Captured(name, (FIXTURES / name).read_bytes(), said)
            for name, said in doc["messages"].items()}


@functools.cache
def window() -> tuple[int, int]:
    """The wall clock (ns) before the capture's first connection and after its flush."""
    a, b = json.loads((FIXTURES / "events.json").read_text())["captured_ns"]
    return a, b


@functools.cache
def fields() -> dict[Path_, str]:
    """Which field each leaf path holds: the one field whose value it holds in every
    capture that has the path. Timestamps are the two u64 leaves that hold a time inside
    the capture's window in every DESTROY; the earlier is the start."""
    candidates: dict[Path_, set[str]] = {}
    times: dict[Path_, list[int]] = {}
    lo, hi = window()
    for c in captured().values():
        want = expected(c)
        for path, off, n in leaves(c.data):
            value = c.data[off:off + n]
            match = {f for f, b in want.items() if b == value}
            candidates[path] = candidates.get(path, match) & match
            if n == 8 and lo <= int.from_bytes(value, "big") <= hi:
                times.setdefault(path, []).append(int.from_bytes(value, "big"))
    out = {p: next(iter(fs)) for p, fs in candidates.items() if len(fs) == 1}
    destroys = sum(c.said["kind"] == "destroy" for c in captured().values())
    stamped = sorted((p for p, ts in times.items() if len(ts) == destroys),
                     key=lambda p: sum(times[p]))
    assert len(stamped) == 2, f"the captures' timestamps: {stamped}"
    out |= {stamped[0]: "start", stamped[1]: "stop"}
    for c in captured().values():  # each field found as often as the message holds it
        found = [out[p] for p, _o, _n in leaves(c.data) if p in out]
        for field in expected(c):
            assert found.count(field) == COPIES.get(field, 1), (c.name, field, found)
    return out


def template(family: int, proto: int, kind: str, zoned: bool) -> Captured:
    match = [c for c in captured().values() if c.key == (family, proto, kind, zoned)]
    if not match:
        raise KeyError(f"no captured IPv{family} protocol {proto} {kind} message"
                       f"{' with a zone' if zoned else ''}: see tests/fixtures/ctnetlink")
    return match[0]


def message(kind: str, orig: tuple[Any, ...], reply: tuple[Any, ...], ct_id: int,
            counters: tuple[int, ...] = (0, 0, 0, 0), ts: tuple[int, int] = (0, 0),
            zone: int | None = None) -> bytes:
    """One NEW or DESTROY event; tuples are (src, dst, proto, sport, dport), the reply's
    destination being the original's source. ``counters`` (orig packets, orig bytes,
    reply packets, reply bytes) and ``ts`` (start, stop ns) are a DESTROY's: the kernel
    sends none in a NEW."""
    (client, vip, proto, sport, vport), (ep, rdst, rproto, eport, rdport) = orig, reply
    assert (rdst, rproto, rdport) == (client, proto, sport), "the reply goes to the client"
    family = ipaddress.ip_address(client).version
    t = template(family, proto, kind, zone is not None)
    values = {"client": _ip(client), "vip": _ip(vip), "endpoint": _ip(ep),
              "proto": bytes([proto]), "sport": struct.pack(">H", sport),
              "vport": struct.pack(">H", vport), "eport": struct.pack(">H", eport),
              "id": struct.pack(">I", ct_id), "zone": struct.pack(">H", zone or 0),
              "opackets": struct.pack(">Q", counters[0]),
              "obytes": struct.pack(">Q", counters[1]),
              "rpackets": struct.pack(">Q", counters[2]),
              "rbytes": struct.pack(">Q", counters[3]),
              "start": struct.pack(">Q", ts[0]), "stop": struct.pack(">Q", ts[1])}
    data = bytearray(t.data)
    known = fields()
    for path, off, n in leaves(t.data):
        if path in known:
            value = values[known[path]]
            assert len(value) == n, (t.name, path, known[path])
            data[off:off + n] = value
    return bytes(data)


def reordered(data: bytes, order: list[int]) -> bytes:
    """The same message with its top-level attributes in another order (indexes into
    the kernel's order): the same bytes, shuffled as another kernel might send them."""
    spans = [(off - 4, (off + n + 3) & ~3) for _t, off, n in attributes(data)]
    return data[:BODY] + b"".join(data[a:b] for a, b in (spans[i] for i in order))
