"""What a report is asked for, checked against what the store holds before it is built:
an unknown service or node is an error that names the closest ones, not an empty
report."""

from __future__ import annotations

from natlens.collector.query.names import ServiceNames, closest
from natlens.collector.report.build import ReportError, ReportQuery
from natlens.collector.store.api import Store
from natlens.timeparse import rfc3339


def check_query(store: Store, q: ReportQuery) -> None:
    if q.service:
        names = ServiceNames(store)
        if not names.ports_of(q.service):
            raise ReportError(f"no service {q.service!r} in the stored rules"
                              + closest(q.service, names.services()))
    if q.node:
        nodes = store.nodes()
        if q.node not in nodes:
            raise ReportError(f"no node {q.node!r} in the store (nodes: "
                              f"{', '.join(nodes) or 'none yet'})")


def empty_window(store: Store, q: ReportQuery) -> str:
    """Why a report has no entries, and where the data lies."""
    lo, hi = store.data_span()
    if lo is None or hi is None:
        return "no decisions in the store yet"
    return (f"no decisions in the window; the store has decisions from {rfc3339(lo)} "
            f"to {rfc3339(hi)}")
