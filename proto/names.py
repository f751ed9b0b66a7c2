"""Names both sides of the wire use: how an endpoint is written, and what each source
and event enum is called in the store, the report and the metrics.

The enum values are written out rather than read from the generated protobuf module:
the rules parsers use this module too, and importing protobuf was a tenth of
``rules parse``'s start (tests/unit/test_columns.py holds them equal)."""

from __future__ import annotations

import ipaddress

# natlens.proto.Source and Event values (proto/natlens.proto)
SOURCES: dict[int, str] = {1: "netlink", 2: "ebpf", 3: "pcap"}
EVENTS: dict[int, str] = {1: "new", 2: "destroy", 3: "snapshot", 4: "recovered"}
# Events that count as a decision in a distribution (a snapshot was made before the
# agent looked; a destroy ends a connection already counted).
COUNTED_EVENTS = ("new", "recovered")
# Events that are a decision of one connection: what `query decisions` lists (a destroy
# is the end of a connection already listed by its decision).
DECISION_EVENTS = ("new", "recovered", "snapshot")


def source_name(source: int, default: str = "unknown") -> str:
    return SOURCES.get(source, default)


def endpoint_key(ip: str, port: int) -> str:
    """``IP:PORT``, or ``[IPv6]:PORT`` as in the report contract."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_endpoint(key: str) -> tuple[str, int]:
    """``endpoint_key``'s inverse; ValueError when ``key`` is not one."""
    if key.startswith("["):
        host, _, port = key[1:].partition("]:")
    else:
        host, _, port = key.rpartition(":")
    ipaddress.ip_address(host)
    return host, int(port)


def endpoint_ip(key: str) -> str:
    """The address of an ``IP:PORT`` / ``[IPv6]:PORT`` key (no check)."""
    return key[1:key.index("]")] if key.startswith("[") else key.rpartition(":")[0]
