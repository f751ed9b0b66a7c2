"""Pure bookkeeping for the watch: what changed between what we knew and an object.

Kept apart from the API calls so the interval logic is tested on its own: an IP is
held from when a pod (or Service) is first seen with it until it is seen without it,
deleted, or finished (a Succeeded/Failed pod's IP goes back to the pool).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Holder:
    namespace: str
    name: str
    node: str = ""


@dataclass
class Owners:
    """uid → the IPs it holds now; the caller turns the changes into intervals."""

    held: dict[str, tuple[Holder, frozenset[str]]] = field(default_factory=dict)

    def update(self, uid: str, holder: Holder, ips: frozenset[str],
               ) -> tuple[list[tuple[str, Holder]], list[tuple[str, Holder]]]:
        """(opened, closed) (ip, holder) pairs for the object's new state."""
        old_holder, old = self.held.get(uid, (holder, frozenset()))
        if ips:
            self.held[uid] = (holder, ips)
        else:
            self.held.pop(uid, None)
        return ([(ip, holder) for ip in sorted(ips - old)],
                [(ip, old_holder) for ip in sorted(old - ips)])

    def forget_missing(self, present: set[str]) -> list[tuple[str, Holder]]:
        """After a relist: everything held by uids no longer listed is closed."""
        closed = []
        for uid in [u for u in self.held if u not in present]:
            holder, ips = self.held.pop(uid)
            closed += [(ip, holder) for ip in sorted(ips)]
        return closed


def pod_ips(pod: dict[str, Any]) -> frozenset[str]:
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return frozenset()
    ips = {p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")}
    if not ips and status.get("podIP"):
        ips = {status["podIP"]}
    if (pod.get("spec") or {}).get("hostNetwork"):
        return frozenset()  # the node's own IP, shared by every host-network pod
    return frozenset(ips)


def service_ips(svc: dict[str, Any]) -> frozenset[str]:
    spec = svc.get("spec") or {}
    ips = set(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    return frozenset(ip for ip in ips if ip and ip != "None")


def slice_service(es: dict[str, Any]) -> tuple[str, str] | None:
    meta = es.get("metadata") or {}
    name = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    return (meta.get("namespace", ""), name) if name else None


def endpoint_set(slices: list[dict[str, Any]]) -> str:
    """A service's endpoints across its slices, as a stable string: ready addresses
    and ports. Only a change of this makes a new epoch (not a resync, not a label)."""
    eps = set()
    for es in slices:
        ports = sorted((p.get("protocol", "TCP"), p.get("port")) for p in es.get("ports") or [])
        for ep in es.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True) is False:
                continue
            for a in ep.get("addresses") or []:
                eps.add((a, json.dumps(ports)))
    return json.dumps(sorted(eps))


def epoch_tag(endpoints: str) -> str:
    return hashlib.sha256(endpoints.encode()).hexdigest()[:12]
