"""Names at the time: which service a VIP:port was, which pod held an IP, at a moment,
and which declared service port a decision belongs to.

A pod's IP is reused after it is deleted, so a name is looked up in the intervals the
Kubernetes watch (or the lab) recorded, at the decision's own time, never "now".
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from natlens.collector.store.api import Store


class PodNames:
    """IP → the ``ns/name`` of the pod that had it at a given time."""

    def __init__(self, store: Store, ips: set[str] | None = None) -> None:
        self._by_ip: dict[str, tuple[list[int], list[tuple[int | None, str]]]] = {}
        for ip, ns, name, t0, t1 in store.pods():
            if ips is not None and ip not in ips:
                continue
            starts, spans = self._by_ip.setdefault(ip, ([], []))
            starts.append(int(t0 or 0))
            spans.append((t1, f"{ns}/{name}"))

    def at(self, ip: str, t: int) -> str | None:
        starts, spans = self._by_ip.get(ip, ([], []))
        i = bisect.bisect_right(starts, t) - 1
        while i >= 0:  # the latest interval that started by t and had not ended
            end, name = spans[i]
            if end is None or end >= t:
                return name
            i -= 1
        return None


def matches(service: str, wanted: str | None, port: int | None = None) -> bool:
    """``NS/NAME:PORTNAME`` against a filter: the same, or ``NS/NAME`` (any port), or
    ``NS/NAME:NUMBER`` when ``port`` (the service port's number) is that number."""
    if wanted is None:
        return True
    if service == wanted:
        return True
    name, _, which = wanted.rpartition(":")
    if not name or "/" not in name:  # NS/NAME without a port
        return service.split(":", 1)[0] == wanted
    return which.isdigit() and port == int(which) and service.split(":", 1)[0] == name


def closest(wanted: str, known: set[str]) -> str:
    """``; did you mean …`` for a name that matched nothing (empty when none is close)."""
    import difflib

    near = difflib.get_close_matches(wanted, sorted(known), n=3, cutoff=0.5) or \
        difflib.get_close_matches(wanted.split(":", 1)[0],
                                  sorted({k.split(":", 1)[0] for k in known}), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(near)}?" if near else ""


def find_port(model: dict[str, Any], vip: str, port: int, proto: str) -> dict[str, Any] | None:
    """The declared service port a decision to VIP:port went through: the ClusterIP (or
    external IP) entry, else a node port declared on any address."""
    fallback = None
    for s in model["services"]:
        if s["port"] != port or s["protocol"] != proto:
            continue
        if s["vip"] == vip:
            return dict(s)
        if s["kind"] == "nodePort" and s["vip"] in ("0.0.0.0", "::"):
            fallback = s
    return dict(fallback) if fallback else None


class ServiceNames:
    """(node, rules version, VIP, port, protocol) → the service port the rules name."""

    def __init__(self, store: Store) -> None:
        self._names: dict[tuple[str, str], dict[tuple[str, int, str], str]] = defaultdict(dict)
        for (node, h), model in store.rule_models().items():
            for s in model["services"]:
                self._names[(node, h)][(s["vip"], s["port"], s["protocol"])] = s["service"]
                if s["kind"] == "nodePort":
                    self._names[(node, h)].setdefault(("*", s["port"], s["protocol"]),
                                                      s["service"])
        self._k8s: dict[str, list[tuple[int, int | None, str]]] = defaultdict(list)
        for vip, ns, name, t0, t1 in store.services():
            self._k8s[vip].append((int(t0 or 0), t1, f"{ns}/{name}"))

    def name(self, node: str, h: str, vip: str, port: int, proto: str, t: int) -> str | None:
        names = self._names.get((node, h), {})
        found = names.get((vip, port, proto)) or names.get(("*", port, proto))
        if found:
            return found
        for t0, t1, name in reversed(self._k8s.get(vip, [])):
            if t0 <= t and (t1 is None or t1 >= t):
                return name
        return None

    def ports_of(self, wanted: str) -> set[tuple[str, int, str]]:
        """The (VIP, port, protocol)s any stored rules give ``NS/NAME[:PORT]``."""
        out = set()
        for names in self._names.values():
            for key, svc in names.items():
                if key[0] != "*" and matches(svc, wanted, key[1]):
                    out.add(key)
        return out

    def services(self) -> set[str]:
        """Every ``NS/NAME:PORT`` the stored rules name."""
        return {svc for names in self._names.values() for svc in names.values()}
