"""Build the report (the JSON contract in docs/report.md): fetch → judge → Holm → shape.

What was observed comes from ``query/observations.py``, the verdicts from
``analyze/``; this module only puts them together. ClientIP affinity ports are judged on
each client's first connection only: later connections follow the affinity, not the
random choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from natlens.collector.analyze.judge import Judgement, judge, verdict
from natlens.collector.analyze.multiple import holm
from natlens.collector.query.names import PodNames, find_port, matches
from natlens.collector.query.observations import Observations, observe
from natlens.collector.report.shape import comparisons, entry_json, lost_json, test_json
from natlens.collector.report.summary import summary
from natlens.collector.store.api import PortKey, Store, Window
from natlens.collector.store.plan import HOUR
from natlens.errors import NatlensError
from natlens.timeparse import rfc3339

DEFAULT_ALPHA = 0.001
MAX_HOURS = 24 * 31
_NO_RULES: dict[str, Any] = {"services": []}


@dataclass(frozen=True, kw_only=True)
class ReportQuery:
    service: str | None = None      # NS/NAME, NS/NAME:PORTNAME or NS/NAME:NUMBER
    node: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    alpha: float = DEFAULT_ALPHA
    weight: str = "connections"     # or "bytes": shares and distance by bytes too

    @property
    def window(self) -> Window:
        return Window(self.node, self.since_ns, self.until_ns)


class ReportError(NatlensError, ValueError):
    """A report that cannot be made as asked."""


Entries = tuple[list[dict[str, Any]], list[Judgement], list[dict[str, Any]], Observations]


def build_report(store: Store, q: ReportQuery) -> dict[str, Any]:
    now = time.time_ns()
    entries, judgements, unmatched, obs = _entries(store, q)
    _verdicts(entries, judgements, q.alpha)
    # An open-ended window (--since) ends now; otherwise at the last decision seen.
    end = q.until_ns or (now if q.since_ns is not None else (obs.end_ns or now))
    return {"generated_at": rfc3339(now),
            "window": {"from": rfc3339(q.since_ns or obs.first_ns or now), "to": rfc3339(end)},
            "alpha": q.alpha, "services": entries,
            "comparisons": comparisons(entries, q.alpha), "unmatched": unmatched,
            "lost": lost_json(store.lost()), "summary": summary(entries)}


def _entries(store: Store, q: ReportQuery) -> Entries:
    """Each observed service port matched to its declared one and judged (no verdict
    yet: that waits for Holm's correction over all of them)."""
    obs = observe(store, q.window)
    models, pods = store.rule_models(), PodNames(store)
    entries: list[dict[str, Any]] = []
    judgements: list[Judgement] = []
    unmatched: list[dict[str, Any]] = []
    for key in sorted(obs.counts):
        sp = find_port(models.get((key.node, key.rules_hash), _NO_RULES), key.vip, key.port,
                       key.protocol)
        if sp is None:
            unmatched.append({"node": key.node, "rules_version": key.rules_hash,
                              "vip": key.vip, "port": key.port, "protocol": key.protocol,
                              "observed": dict(sorted(obs.counts[key].items()))})
        elif matches(sp["service"], q.service, sp["port"]):
            j = _judge(store, q, obs, key, sp)
            entries.append(entry_json(key, sp, j, obs, pods, q.weight))
            judgements.append(j)
    return entries, judgements, unmatched, obs


def _judge(store: Store, q: ReportQuery, obs: Observations, key: PortKey,
           sp: dict[str, Any]) -> Judgement:
    observed = obs.counts[key]
    if sp["affinity"] == "ClientIP":
        observed = store.first_connections(q.window, key, obs.counted[key])
    return judge([(e["endpoint"], e["probability"]) for e in sp["endpoints"]], observed,
                 sp.get("scheduler", "random"))


def _verdicts(entries: list[dict[str, Any]], judgements: list[Judgement],
              alpha: float) -> None:
    """Holm's correction over every test of the report, then each entry's verdict."""
    tested = [i for i, j in enumerate(judgements) if j.test is not None]
    adjusted = dict(zip(tested, holm([t.p_value for i in tested
                                      if (t := judgements[i].test) is not None]),
                        strict=True))
    for i, (entry, j) in enumerate(zip(entries, judgements, strict=True)):
        entry["test"] = test_json(j, adjusted.get(i))
        entry["verdict"] = verdict(j, adjusted.get(i), alpha)


def build_report_by_hour(store: Store, q: ReportQuery) -> dict[str, Any]:
    """One judgement per service port and clock hour; Holm over all of them."""
    lo, hi = store.data_span()
    start = q.since_ns if q.since_ns is not None else lo
    end = q.until_ns if q.until_ns is not None else (time.time_ns() if q.since_ns else hi)
    whole = build_report(store, q)
    if start is None or end is None:
        return whole | {"by": "hour"}
    hours = range(start - start % HOUR, end + 1, HOUR)
    if len(hours) > MAX_HOURS:
        raise ReportError(f"--by hour over {len(hours)} hours; narrow the window to at most "
                         f"{MAX_HOURS} (--since/--from/--to)")
    entries: list[dict[str, Any]] = []
    judgements: list[Judgement] = []
    for h in hours:
        part, js, _, _ = _entries(store, replace(q, since_ns=max(h, start),
                                                 until_ns=min(h + HOUR - 1, end)))
        entries += [e | {"hour": rfc3339(h)} for e in part]
        judgements += js
    # Holm over every hour's tests: more hours, more chances of a false alarm.
    _verdicts(entries, judgements, q.alpha)
    return whole | {"by": "hour", "services": entries, "summary": summary(entries)}
