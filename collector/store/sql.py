"""The store's reads and rollups in SQL that SQLite and PostgreSQL both speak.

A backend subclasses ``SqlStore`` and supplies ``_rows`` (run a query, ``?`` for each
parameter), ``_write`` (a transaction under the writers' lock) and the few statements
its dialect spells differently. Which rows a window's counts come from (rollups for
whole minutes already rolled up, rows for the rest) is decided here, by ``plan.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from natlens.collector.store.api import (
    Count,
    DecisionFilter,
    DecisionRecord,
    Interval,
    Lost,
    PortKey,
    Sampled,
    Sighting,
    Snapshot,
    Window,
)
from natlens.collector.store.plan import HOUR, MINUTE, Plan, clause, floor_to, plan
from natlens.collector.store.schema import ROLLUP_COLUMNS, ROLLUP_KEY
from natlens.proto.names import COUNTED_EVENTS

LATE_NS = 10 * MINUTE  # rollups are rebuilt from this long before the last pass

_COUNTED = ",".join(f"'{e}'" for e in COUNTED_EVENTS)
_GROUP = "node, rules_hash, protocol, vip, vip_port, endpoint, source"
# The report counts NEW decisions of the eBPF source in its kernel counters, not again.
_NOT_EBPF_NEW = "NOT (source = 'ebpf' AND event = 'new')"
_PER_CONNECTION = f"event IN ({_COUNTED}) AND sample_rate = 1"

# One row per decision or counter window: what it adds to its rollup bucket. Connections
# are counted as the report counts them; bytes come from DESTROY events of user-space
# sources and from the kernel counters. Kept apart per source.
_DESTROYED = "event = 'destroy' AND source != 'ebpf'"
_ROLLUP_ROWS = f"""
    SELECT time_ns AS t, node, protocol, vip, vip_port, rules_hash, endpoint, source,
      CASE WHEN event IN ({_COUNTED}) AND {_NOT_EBPF_NEW} THEN sample_rate ELSE 0 END
        AS connections,
      CASE WHEN {_DESTROYED} THEN sample_rate ELSE 0 END AS closed,
      CASE WHEN {_DESTROYED} THEN orig_bytes ELSE 0 END AS orig_bytes,
      CASE WHEN {_DESTROYED} THEN reply_bytes ELSE 0 END AS reply_bytes,
      CASE WHEN {_DESTROYED} THEN orig_packets ELSE 0 END AS orig_packets,
      CASE WHEN {_DESTROYED} THEN reply_packets ELSE 0 END AS reply_packets
    FROM decisions WHERE time_ns >= ? AND time_ns < ?
    UNION ALL
    SELECT window_end_ns, node, protocol, vip, vip_port, rules_hash, endpoint, source,
      connections, closed, orig_bytes, reply_bytes, orig_packets, reply_packets
    FROM counters WHERE window_end_ns >= ? AND window_end_ns < ?"""
_ROLLUP_GROUP = "node, protocol, vip, vip_port, rules_hash, endpoint, source"
_SUMS = ", ".join(f"SUM({c})" for c in ROLLUP_COLUMNS)
_ROLLUP_INSERT = f"INSERT INTO rollups ({', '.join(ROLLUP_KEY)}, {', '.join(ROLLUP_COLUMNS)}) "


def _node(w: Window, column: str = "node") -> tuple[str, list[Any]]:
    return (f"{column} = ?", [w.node]) if w.node else ("1 = 1", [])


def window_clauses(w: Window) -> tuple[str, list[Any]]:
    """SQL conditions on a decision's node and (inclusive) time."""
    clauses: list[str] = []
    args: list[Any] = []
    for cond, value in (("node = ?", w.node), ("time_ns >= ?", w.since_ns),
                        ("time_ns <= ?", w.until_ns)):
        if value is not None and value != "":
            clauses.append(cond)
            args.append(value)
    return " AND ".join(clauses) or "1 = 1", args


def _counts(rows: Iterable[tuple[Any, ...]]) -> list[Count]:
    return [Count(PortKey(node, h, proto, vip, int(port)), ep, src, int(n or 0), int(t0 or 0),
                  int(t1 or 0)) for node, h, proto, vip, port, ep, src, n, t0, t1 in rows]


class SqlStore:
    """Portable reads; a backend provides the connection."""

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        """A transaction under the writers' lock."""
        raise NotImplementedError

    def _one(self, sql: str, args: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    # ---- rules

    def rule_models(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(node, h): json.loads(model) for node, h, model in
                self._rows("SELECT node, hash, model FROM rule_snapshots")}

    def rules_in_force(self, node: str, at_ns: int) -> Snapshot | None:
        row = self._one("SELECT time_ns, hash, model FROM rule_snapshots WHERE node = ? AND "
                        "time_ns <= ? ORDER BY time_ns DESC LIMIT 1", [node, at_ns])
        return None if row is None else Snapshot(node, row[0], row[1], json.loads(row[2]))

    def rules_after(self, node: str, time_ns: int, rules_hash: str) -> int | None:
        row = self._one("SELECT MIN(time_ns) FROM rule_snapshots WHERE node = ? AND "
                        "time_ns > ? AND hash != ?", [node, time_ns, rules_hash])
        return None if row is None or row[0] is None else int(row[0])

    def rule_times(self, node: str) -> tuple[int | None, int | None]:
        row = self._one("SELECT MIN(time_ns), MAX(time_ns) FROM rule_snapshots WHERE "
                        "node = ?", [node])
        return (row[0], row[1]) if row else (None, None)

    def nodes(self) -> list[str]:
        return sorted(r[0] for r in self._rows("SELECT DISTINCT node FROM rule_snapshots"))

    # ---- counts

    def _mark(self, name: str) -> int | None:
        row = self._one("SELECT value_ns FROM retention WHERE name = ?", [name])
        return None if row is None else int(row[0])

    def _plan(self, w: Window) -> Plan:
        return plan(w.since_ns, w.until_ns, self._mark("rolled_upto_ns"),
                    self._mark("pruned_before_ns") or 0)

    def _rollup_sums(self, w: Window, p: Plan, what: str) -> list[Count]:
        """Whole hours from the hour rollups, the rest of the rolled-up minutes from
        the minute ones."""
        out: list[Count] = []
        node_sql, node_args = _node(w)
        for granularity, segments in zip(("minute", "hour"), p.by_granularity(), strict=True):
            if not segments:
                continue
            sql, args = clause("bucket_ns", segments)
            out += _counts(self._rows(
                f"SELECT {_GROUP}, SUM({what}), MIN(bucket_ns), MAX(bucket_ns) FROM rollups "
                f"WHERE granularity = ? AND {sql} AND {node_sql} AND ({what}) > 0 "
                f"GROUP BY {_GROUP}", [granularity, *args, *node_args]))
        return out

    def _sums(self, w: Window, decided: tuple[str, str], counted: tuple[str, str],
              rolled: str) -> list[Count]:
        """One sum per endpoint and source over the window: ``decided`` (what to sum,
        which decisions) and ``counted`` (the same of kernel counter windows) over the
        rows not rolled up yet, ``rolled`` of the rollups for the rest."""
        p = self._plan(w)
        node_sql, node_args = _node(w)
        raw, raw_args = clause("time_ns", p.raw)
        craw, craw_args = clause("window_end_ns", p.raw)
        return [*_counts(self._rows(
            f"SELECT {_GROUP}, SUM({decided[0]}), MIN(time_ns), MAX(time_ns) FROM decisions "
            f"WHERE {decided[1]} AND {node_sql} AND {raw} GROUP BY {_GROUP}",
            [*node_args, *raw_args])),
            *_counts(self._rows(
                f"SELECT {_GROUP}, SUM({counted[0]}), MIN(window_start_ns), "
                f"MAX(window_end_ns) FROM counters WHERE {counted[1]} AND {craw} AND "
                f"{node_sql} GROUP BY {_GROUP}", [*craw_args, *node_args])),
            *self._rollup_sums(w, p, rolled)]

    def connection_counts(self, w: Window) -> list[Count]:
        return self._sums(w, ("sample_rate", f"event IN ({_COUNTED}) AND {_NOT_EBPF_NEW}"),
                          ("connections", "connections > 0"), "connections")

    def byte_counts(self, w: Window) -> list[Count]:
        return self._sums(w, ("(orig_bytes + reply_bytes) * sample_rate", _DESTROYED),
                          ("orig_bytes + reply_bytes", "1 = 1"), "orig_bytes + reply_bytes")

    def sampled(self, w: Window) -> list[Sampled]:
        where, args = window_clauses(w)
        return [Sampled(PortKey(node, h, proto, vip, port), ep, int(k), int(rate))
                for node, h, proto, vip, port, ep, k, rate in self._rows(
                    "SELECT node, rules_hash, protocol, vip, vip_port, endpoint, COUNT(*), "
                    f"MAX(sample_rate) FROM decisions WHERE {where} AND source = 'ebpf' AND "
                    "event = 'new' AND sample_rate > 1 GROUP BY node, rules_hash, protocol, "
                    "vip, vip_port, endpoint", args)]

    def first_connections(self, w: Window, key: PortKey, source: str) -> dict[str, int]:
        where, args = window_clauses(w)
        return {ep: int(n) for ep, n in self._rows(
            "SELECT endpoint, COUNT(*) FROM (SELECT endpoint, ROW_NUMBER() OVER (PARTITION "
            "BY client_ip ORDER BY time_ns) AS rn FROM decisions WHERE "
            f"event IN ({_COUNTED}) AND {where} AND node = ? AND rules_hash = ? AND "
            "protocol = ? AND vip = ? AND vip_port = ? AND (source = ? OR ? = '')) AS f "
            "WHERE rn = 1 GROUP BY endpoint", [*args, *key, source, source])}

    def minute_counts(self, w: Window, key: PortKey,
                      sources: tuple[str, ...]) -> list[tuple[int, str, int]]:
        extra, args = "", list[int]()
        if w.since_ns is not None:
            extra, args = extra + " AND t >= ?", [*args, w.since_ns]
        if w.until_ns is not None:
            extra, args = extra + " AND t <= ?", [*args, w.until_ns]
        pruned = self._mark("pruned_before_ns") or 0
        marks = ", ".join("?" * len(sources))
        return [(int(m), ep, int(n)) for m, ep, n in self._rows(
            f"SELECT (t / {MINUTE}) * {MINUTE} AS m, endpoint, SUM(n) FROM ("
            "SELECT time_ns AS t, endpoint, sample_rate AS n, node, rules_hash AS h, protocol, "
            f"vip, vip_port, source FROM decisions WHERE event IN ({_COUNTED}) AND "
            f"{_NOT_EBPF_NEW} UNION ALL SELECT window_end_ns, endpoint, connections, node, "
            "rules_hash, protocol, vip, vip_port, source FROM counters UNION ALL SELECT "
            "bucket_ns, endpoint, connections, node, rules_hash, protocol, vip, vip_port, "
            "source FROM rollups WHERE granularity = 'minute' AND bucket_ns < ?) AS u "
            "WHERE node = ? AND h = ? AND protocol = ? AND vip = ? AND vip_port = ? AND "
            f"source IN ({marks}){extra} GROUP BY m, endpoint ORDER BY m",
            [pruned, *key, *sources, *args])]

    def lost(self) -> list[Lost]:
        return [Lost(n, s, r, int(c), int(rc or 0)) for n, s, r, c, rc in self._rows(
            "SELECT node, source, reason, SUM(count), SUM(recovered) FROM lost_events "
            "GROUP BY node, source, reason ORDER BY node, source, reason")]

    def data_span(self) -> tuple[int | None, int | None]:
        row = self._one(
            "SELECT MIN(a), MAX(b) FROM (SELECT MIN(time_ns) AS a, MAX(time_ns) AS b FROM "
            "decisions UNION ALL SELECT MIN(window_end_ns), MAX(window_end_ns) FROM counters "
            "UNION ALL SELECT MIN(bucket_ns), MAX(bucket_ns) FROM rollups WHERE "
            "granularity = 'minute') AS s")
        return (row[0], row[1]) if row else (None, None)

    # ---- names and records

    def pods(self) -> list[Interval]:
        return [Interval(*r) for r in self._rows(
            "SELECT ip, namespace, name, from_ns, to_ns FROM pods ORDER BY ip, from_ns")]

    def services(self) -> list[Interval]:
        return [Interval(*r) for r in self._rows(
            "SELECT vip, namespace, name, from_ns, to_ns FROM services ORDER BY from_ns")]

    def decisions(self, f: DecisionFilter) -> list[DecisionRecord]:
        where, args = window_clauses(f.window)
        clauses = [where]
        for cond, value in (("client_ip = ?", f.client), ("source = ?", f.source),
                            ("endpoint = ?", f.endpoint)):
            if value:
                clauses.append(cond)
                args.append(value)
        if f.endpoint_ip:
            prefix = f"[{f.endpoint_ip}]:" if ":" in f.endpoint_ip else f"{f.endpoint_ip}:"
            clauses.append("substr(endpoint, 1, ?) = ?")
            args += [len(prefix), prefix]
        if f.events:
            clauses.append(f"event IN ({', '.join('?' * len(f.events))})")
            args += list(f.events)
        if f.ports is not None:
            ports = sorted(f.ports)
            clauses.append("(" + (" OR ".join("(vip = ? AND vip_port = ? AND protocol = ?)"
                                              for _ in ports) or "1 = 0") + ")")
            args += [x for p in ports for x in p]
        return [DecisionRecord(*r) for r in self._rows(
            "SELECT time_ns, node, protocol, client_ip, client_port, vip, vip_port, endpoint, "
            "rules_hash, source, event, ct_id, orig_packets, orig_bytes, reply_packets, "
            "reply_bytes, duration_ns FROM decisions WHERE " + " AND ".join(clauses)
            + " ORDER BY time_ns LIMIT ?", [*args, f.limit + 1])]

    def source_spans(self, w: Window) -> dict[str, dict[str, tuple[int, int]]]:
        where, args = window_clauses(w)
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for node, source, lo, hi in self._rows(
                f"SELECT node, source, MIN(time_ns), MAX(time_ns) FROM decisions WHERE "
                f"{_PER_CONNECTION} AND {where} GROUP BY node, source", args):
            out.setdefault(node, {})[source] = (int(lo), int(hi))
        return out

    def sightings(self, w: Window, node: str, lo: int, hi: int) -> Iterator[Sighting]:
        where, args = window_clauses(w)
        for r in self._rows(
                "SELECT protocol, client_ip, client_port, vip, vip_port, time_ns, source, "
                f"endpoint FROM decisions WHERE {_PER_CONNECTION} AND {where} AND node = ? "
                "AND time_ns >= ? AND time_ns <= ? ORDER BY protocol, client_ip, client_port, "
                "vip, vip_port, time_ns", [*args, node, lo, hi]):
            yield Sighting(*r)

    def agents(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT DISTINCT agent_id FROM batches")}

    def agent_activity(self) -> list[tuple[str, str, int, int]]:
        return [(a, n, int(t), int(k)) for a, n, t, k in self._rows(
            "SELECT agent_id, node, MAX(received_ns), COUNT(*) FROM batches "
            "GROUP BY agent_id, node ORDER BY node, agent_id")]

    # ---- rollups

    def rollup(self, now_ns: int) -> tuple[int, int]:
        """Rebuild the minute and hour buckets from ``LATE_NS`` before the last pass up
        to the last whole minute, from the rows themselves: a batch that arrives a few
        minutes late still lands in its bucket, and running a pass twice changes
        nothing."""
        end = floor_to(now_ns, MINUTE)
        with self._write() as run:
            last = self._mark("rolled_upto_ns")
            if last is None:
                first = self._one("SELECT MIN(t) FROM (SELECT MIN(time_ns) AS t FROM "
                                  "decisions UNION ALL SELECT MIN(window_end_ns) FROM "
                                  "counters) AS f")
                start = floor_to(int(first[0]), MINUTE) if first and first[0] is not None \
                    else end
            else:
                start = floor_to(max(last - LATE_NS, 0), MINUTE)
            if start >= end:
                return start, end
            self._rebuild(run, start, end)
            self._set_mark(run, "rolled_upto_ns", end)
        return start, end

    def _rebuild(self, run: Any, start: int, end: int) -> None:
        run("DELETE FROM rollups WHERE granularity = 'minute' AND bucket_ns >= ? AND "
            "bucket_ns < ?", [start, end])
        run(f"{_ROLLUP_INSERT} SELECT 'minute', (t / {MINUTE}) * {MINUTE}, {_ROLLUP_GROUP}, "
            f"{_SUMS} FROM ({_ROLLUP_ROWS}) AS r GROUP BY (t / {MINUTE}) * {MINUTE}, "
            f"{_ROLLUP_GROUP}", [start, end, start, end])
        h0 = floor_to(start, HOUR)
        run("DELETE FROM rollups WHERE granularity = 'hour' AND bucket_ns >= ? AND "
            "bucket_ns < ?", [h0, end])
        run(f"{_ROLLUP_INSERT} SELECT 'hour', (bucket_ns / {HOUR}) * {HOUR}, {_ROLLUP_GROUP}, "
            f"{_SUMS} FROM rollups WHERE granularity = 'minute' AND bucket_ns >= ? AND "
            f"bucket_ns < ? GROUP BY (bucket_ns / {HOUR}) * {HOUR}, {_ROLLUP_GROUP}",
            [h0, end])

    def _set_mark(self, run: Any, name: str, value: int) -> None:
        run("INSERT INTO retention (name, value_ns) VALUES (?, ?) ON CONFLICT (name) DO "
            "UPDATE SET value_ns = excluded.value_ns", [name, value])

