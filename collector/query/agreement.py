"""``natlens report --agreement``: per node watched by several sources, the connections
each source saw and the ones it missed (the tally is ``analyze/agreement.py``'s).

Only per-connection records take part: NEW (and recovered) decisions, unsampled. A
source shipping only counters (eBPF without ``--decisions``) cannot be compared per
connection and is left out, which the section says by not listing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from natlens.collector.analyze.agreement import (
    WINDOW_NS,
    Agreement,
    Sighting,
    connections,
    in_window,
    shared_window,
)
from natlens.collector.store.api import Store, Window


@dataclass(frozen=True)
class NodeAgreement:
    node: str
    tally: Agreement
    window: tuple[int, int] | None  # when every source was reporting (None: never at once)


def agreement(store: Store, w: Window, window_ns: int = WINDOW_NS) -> list[NodeAgreement]:
    out = []
    for node, by_source in sorted(store.source_spans(w).items()):
        if len(by_source) < 2:
            continue
        tally = Agreement(tuple(sorted(by_source)))
        shared = shared_window(by_source)
        if shared is not None:
            lo, hi = shared
            sightings = (Sighting((s.protocol, s.client_ip, s.client_port, s.vip, s.vip_port),
                                  s.time_ns, s.source, s.endpoint)
                         for s in store.sightings(w, node, lo - window_ns, hi + window_ns))
            for c in connections(sightings, window_ns):
                if in_window(c, lo, hi):
                    tally.add(c)
        out.append(NodeAgreement(node, tally, shared))
    return out
