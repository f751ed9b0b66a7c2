"""What a report is asked for, checked against what the store holds before it is built:
an unknown service or node is an error that names the closest ones, not an empty
report."""

from __future__ import annotations

from typing import Any

from natlens.collector.query.names import ServiceNames, closest
from natlens.collector.report.build import (
    ReportError,
    ReportQuery,
    build_report,
    build_report_by_hour,
)
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


def report_for(store: Store, q: ReportQuery, by_hour: bool = False) -> dict[str, Any]:
    """The report ``natlens report`` prints and ``/api/report`` answers: checked, built,
    and when empty, saying where the data is."""
    check_query(store, q)
    rep = build_report_by_hour(store, q) if by_hour else build_report(store, q)
    if not rep["services"]:
        rep["empty"] = empty_window(store, q)
    return rep
