"""What was observed in a window, per service port: the counts a report judges.

Decisions are grouped by node, rules version and service port (``PortKey``), so every
observation is judged against the rules in force on its node when it was made. A node
watched by several sources at once is counted from one of them (``analyze/sources.py``),
with every source's total kept beside it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from natlens.collector.analyze.sampling import scaled_error
from natlens.collector.analyze.sources import combine, pick
from natlens.collector.store.api import Count, PortKey, Store, Window

PerSource = dict[str, dict[str, int]]   # source → endpoint → n


@dataclass
class Observations:
    by_source: dict[PortKey, PerSource] = field(default_factory=dict)
    counted: dict[PortKey, str] = field(default_factory=dict)          # the source counted
    counts: dict[PortKey, dict[str, int]] = field(default_factory=dict)
    bytes: dict[PortKey, dict[str, int]] = field(default_factory=dict)
    sampled: dict[PortKey, dict[str, Any]] = field(default_factory=dict)
    last_ns: dict[PortKey, int] = field(default_factory=dict)
    first_ns: int | None = None
    end_ns: int | None = None


def _per_source(counts: list[Count]) -> dict[PortKey, PerSource]:
    out: dict[PortKey, PerSource] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for c in counts:
        out[c.key][c.source][c.endpoint] += c.n
    return out


def observe(store: Store, w: Window) -> Observations:
    obs = Observations()
    counts = store.connection_counts(w)
    obs.by_source = _per_source(counts)
    for c in counts:
        obs.first_ns = c.first_ns if obs.first_ns is None else min(obs.first_ns, c.first_ns)
        obs.end_ns = c.last_ns if obs.end_ns is None else max(obs.end_ns, c.last_ns)
        obs.last_ns[c.key] = max(obs.last_ns.get(c.key, 0), c.last_ns)
    for key, per_source in obs.by_source.items():
        obs.counted[key], obs.counts[key] = pick(per_source)
    volume = _per_source(store.byte_counts(w))
    obs.bytes = {key: combine(volume.get(key, {}), src) for key, src in obs.counted.items()}
    for s in store.sampled(w):
        e = obs.sampled.setdefault(s.key, {"rate": s.rate, "endpoints": []})
        e["rate"] = max(e["rate"], s.rate)
        e["endpoints"].append({"endpoint": s.endpoint, "decisions": s.kept,
                               "scaled": s.kept * s.rate,
                               "error": round(scaled_error(s.kept, s.rate), 1)})
    return obs
