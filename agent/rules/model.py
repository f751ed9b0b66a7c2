"""The declared model: per service port, each endpoint's effective probability.

This is the JSON contract of ``natlens rules parse`` and the content of a RuleSnapshot.
The hash covers the model, not the dump text, so packet counters and timestamps in an
``iptables-save`` never make a new rules version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeclaredEndpoint:
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
class DeclaredModel:
    mode: str
    services: tuple[ServicePort, ...]

    @property
    def hash(self) -> str:
        body = json.dumps([asdict(s) for s in self.services], sort_keys=True,
                          separators=(",", ":"))
        return "sha256:" + hashlib.sha256(f"{self.mode}\n{body}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "hash": self.hash,
                "services": [asdict(s) | {"endpoints": [asdict(e) for e in s.endpoints]}
                             for s in self.services]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeclaredModel:
        return cls(mode=data["mode"], services=tuple(
            ServicePort(**{k: v for k, v in s.items() if k != "endpoints"},
                        endpoints=tuple(DeclaredEndpoint(**e) for e in s["endpoints"]))
            for s in data["services"]))
