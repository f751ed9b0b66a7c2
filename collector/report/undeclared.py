"""``natlens query undeclared``: traffic to endpoints no rule declared, read off a report.

Two kinds: an endpoint the node's rules do not list for a service port that they do
declare (a stale endpoint, a foreign DNAT in front of kube-proxy's), and a VIP:port the
rules do not declare at all (another proxy, a NAT rule of someone else's).
"""

from __future__ import annotations

from typing import Any


def undeclared(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in report["services"]:
        for u in s["undeclared"]:
            if u["observed"]:
                out.append({"kind": "endpoint not declared", "node": s["node"],
                            "service": s["service"], "vip": s["vip"], "port": s["port"],
                            "protocol": s["protocol"], "rules_version": s["rules_version"],
                            "endpoint": u["endpoint"], "pod": u.get("pod"),
                            "connections": u["observed"]})
    for u in report["unmatched"]:
        for ep, n in u["observed"].items():
            out.append({"kind": "service port not declared", "node": u["node"],
                        "service": None, "vip": u["vip"], "port": u["port"],
                        "protocol": u["protocol"], "rules_version": u["rules_version"],
                        "endpoint": ep, "pod": None, "connections": n})
    return out
