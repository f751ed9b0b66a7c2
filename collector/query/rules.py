"""``natlens query rules``: the declared model a node's rules gave at a moment."""

from __future__ import annotations

from typing import Any

from natlens.collector.query.decisions import QueryError
from natlens.collector.store.api import Store


class RulesLater(QueryError):
    """The node sent its first rules after the moment asked about."""

    def __init__(self, node: str, first_ns: int, at_ns: int) -> None:
        super().__init__(f"node {node!r} sent its first rules after the time asked for")
        self.node, self.first_ns, self.at_ns = node, first_ns, at_ns


def rules_at(store: Store, node: str, at_ns: int) -> dict[str, Any]:
    """The last snapshot the node sent at or before ``at_ns``, with when it took effect
    and when it was replaced (ns; None: still in force)."""
    snap = store.rules_in_force(node, at_ns)
    if snap is None:
        first, _ = store.rule_times(node)
        if first is None:
            raise QueryError(f"no rules stored for node {node!r} (nodes: "
                             f"{', '.join(store.nodes()) or 'none'})")
        raise RulesLater(node, first, at_ns)
    return {"node": node, "at_ns": at_ns, "in_force_from_ns": snap.time_ns,
            "replaced_at_ns": store.rules_after(node, snap.time_ns, snap.hash),
            **snap.model}
