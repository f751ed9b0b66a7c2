"""The declared model: per service port, each endpoint's effective probability.

This is the JSON contract of ``natlens rules parse`` (docs/declared-model.md) and the
content of a RuleSnapshot. The hash covers the service ports, not the dump text, so
packet counters and timestamps in an ``iptables-save`` never make a new rules version;
``ignored`` (the rules the parser read and did not model) is reported beside it, not
hashed.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import orjson


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """The garbage collector held off while a big dump becomes tens of thousands of
    small objects, none of them in a cycle: its passes cost a fifth of the parse."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class DeclaredEndpoint(NamedTuple):
    """A named tuple, not a frozen dataclass: a big node has tens of thousands, and a
    frozen dataclass costs four times as much to build."""

    endpoint: str
    probability: float
    chain: str


@dataclass(frozen=True)
class ServicePort:
    service: str
    kind: str
    vip: str
    port: int
    protocol: str
    affinity: str = "None"
    policy: str = "Cluster"
    endpoints: tuple[DeclaredEndpoint, ...] = field(default_factory=tuple)
    chain: str = ""  # the chain that picks the endpoint (KUBE-SVC-…/KUBE-SVL-…)
    scheduler: str = "random"  # iptables/nftables pick at random; IPVS names its scheduler


@dataclass(frozen=True)
class Ignored:
    """Rules of one chain (or kind of chain) the parser read and did not model."""

    table: str
    chain: str
    why: str
    rules: int


def port_json(s: ServicePort) -> dict[str, Any]:
    """A service port as the contract writes it (written out: ``dataclasses.asdict``
    cost a third of ``rules parse`` on a big node)."""
    return {"service": s.service, "kind": s.kind, "vip": s.vip, "port": s.port,
            "protocol": s.protocol, "affinity": s.affinity, "policy": s.policy,
            "endpoints": [{"endpoint": e.endpoint, "probability": e.probability,
                           "chain": e.chain} for e in s.endpoints],
            "chain": s.chain, "scheduler": s.scheduler}


@dataclass(frozen=True)
class DeclaredModel:
    mode: str
    services: tuple[ServicePort, ...]
    ignored: tuple[Ignored, ...] = field(default=(), compare=False)
    modeled: int = field(default=0, compare=False)  # rules read into the service ports

    @cached_property
    def _ports(self) -> list[dict[str, Any]]:
        return [port_json(s) for s in self.services]

    @cached_property
    def hash(self) -> str:
        """sha256 of the mode and the ports as compact JSON with sorted keys: orjson's
        bytes, the same as the standard library's for ASCII text (which it falls back
        to otherwise), at a tenth of the time."""
        body = orjson.dumps(self._ports, option=orjson.OPT_SORT_KEYS)
        if not body.isascii():
            body = json.dumps(self._ports, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(f"{self.mode}\n".encode() + body).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "hash": self.hash, "services": self._ports,
                "ignored": [{"table": i.table, "chain": i.chain, "why": i.why,
                             "rules": i.rules} for i in self.ignored]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeclaredModel:
        return cls(mode=data["mode"], services=tuple(
            ServicePort(**{k: v for k, v in s.items() if k != "endpoints"},
                        endpoints=tuple(DeclaredEndpoint(**e) for e in s["endpoints"]))
            for s in data["services"]), ignored=tuple(
                Ignored(**i) for i in data.get("ignored", [])))
