"""The collector's store: one SQLite file (WAL) written through sqlite-utils.

``ingest`` commits a whole batch or nothing, and a batch already stored (same agent,
boot and sequence) is acknowledged as a duplicate without writing anything again.
Each decision is stamped with the rules version in force on its node at its time.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from natlens.agent.rules.model import endpoint_key
from natlens.collector.store.schema import (
    COUNTER_COLUMNS,
    DECISION_KEY,
    DECISION_ROW,
    migrate,
)
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import KEY_OF, OPTIONAL, ROW_OF, ColumnsError, check, column, count

log = logging.getLogger("natlens.collector.store")

SOURCES = {pb.SOURCE_NETLINK: "netlink", pb.SOURCE_EBPF: "ebpf", pb.SOURCE_PCAP: "pcap"}
EVENTS = {pb.EVENT_NEW: "new", pb.EVENT_DESTROY: "destroy", pb.EVENT_SNAPSHOT: "snapshot",
          pb.EVENT_RECOVERED: "recovered"}
COUNTED_EVENTS = ("new", "recovered")
# A row whose identity (time, key, client, conntrack id, zone) is stored already is the
# same decision sent twice: kept once, and counted (Store.repeated_decisions).
DECISION_INSERT = (f"INSERT OR IGNORE INTO decision_rows ({', '.join(DECISION_ROW)}) "
                   f"VALUES ({', '.join('?' * len(DECISION_ROW))})")
KEY_INSERT = (f"INSERT OR IGNORE INTO decision_keys ({', '.join(DECISION_KEY)}) "
              f"VALUES ({', '.join('?' * len(DECISION_KEY))})")
KEY_SELECT = (f"SELECT id FROM decision_keys WHERE "
              f"{' AND '.join(f'{c} = ?' for c in DECISION_KEY)}")
MAX_CACHED_KEYS = 1_000_000


_SAMPLED = (pb.EVENT_NEW, pb.EVENT_DESTROY)


class BatchRejected(ValueError):
    """A batch that cannot be stored as sent; nothing of it was written."""


@dataclass(frozen=True)
class PodRecord:
    ip: str
    namespace: str
    name: str
    node: str
    from_ns: int = 0
    to_ns: int | None = None


def validate(batch: pb.Batch) -> None:
    if not batch.agent_id or not batch.boot_id or not batch.node:
        raise BatchRejected("batch without agent_id, boot_id or node")
    if batch.seq == 0:
        raise BatchRejected("batch without a sequence number")
    for r in batch.rules:
        if not r.hash or not r.mode:
            raise BatchRejected("rule snapshot without hash or mode")
    try:
        check(batch.columns)
    except ColumnsError as e:
        raise BatchRejected(str(e)) from None
    for c in batch.counters:
        if not c.epoch or not c.vip or not c.endpoint_ip or not c.protocol:
            raise BatchRejected("counter without epoch, vip, endpoint or protocol")
        if c.vip_port > 65535 or c.endpoint_port > 65535:
            raise BatchRejected("counter with a port above 65535")


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        conn = sqlite3.connect(path, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")
        migrate(self.db)
        self.lock = threading.Lock()
        # decision key → its id in decision_keys (ids taken in an open transaction are
        # in _new_keys until it commits: a rolled-back batch takes them away again)
        self._keys: dict[tuple[str, str, int], dict[tuple[Any, ...], tuple[int, int]]] = {}
        self._new_keys: list[tuple[str, str, int, tuple[Any, ...]]] = []
        self._epochs: dict[str, tuple[list[int], list[str]]] = {}
        self.repeated_decisions = 0
        for node, t, h in self.db.execute(
                "SELECT node, time_ns, hash FROM rule_snapshots ORDER BY node, time_ns"):
            times, hashes = self._epochs.setdefault(node, ([], []))
            times.append(t)
            hashes.append(h)

    def close(self) -> None:
        self.db.close()

    def rules_at(self, node: str, t: int) -> str:
        """The rules version in force on ``node`` at ``t`` (the first one if earlier)."""
        times, hashes = self._epochs.get(node, ([], []))
        if not times:
            return ""
        return hashes[max(bisect.bisect_right(times, t) - 1, 0)]

    def ingest(self, batch: pb.Batch) -> bool:
        """Store a batch atomically; False if it was already stored (a resend).

        Rows are built under the lock: built outside it, while another stream's rows
        are written, they were slower (sqlite3 gives the GIL up and takes it back for
        every row it steps, so the two threads queue on the GIL; BENCHMARKS.md)."""
        validate(batch)
        now = time.time_ns()
        rate = max(batch.sample_rate, 1)
        with self.lock:
            if self.db.execute("SELECT 1 FROM batches WHERE agent_id=? AND boot_id=? AND seq=?",
                               [batch.agent_id, batch.boot_id, batch.seq]).fetchone():
                return False
            new_epochs: list[tuple[int, str]] = []
            try:
                with self.db.atomic():
                    self.db.table("batches").insert({
                        "agent_id": batch.agent_id, "boot_id": batch.boot_id, "seq": batch.seq,
                        "node": batch.node, "received_ns": now,
                        "records": count(batch) + len(batch.rules) + len(batch.lost)
                        + len(batch.counters)})
                    for r in batch.rules:
                        self.db.table("rule_snapshots").insert({
                            "node": batch.node, "time_ns": r.time_ns, "hash": r.hash,
                            "mode": r.mode, "model": json.dumps(_model_json(r))}, ignore=True)
                        new_epochs.append((r.time_ns, r.hash))
                    self._add_epochs(batch.node, new_epochs)
                    # Plain executemany: sqlite-utils' insert_all ran at 0.43× its speed
                    # on this table, the collector's hottest path (BENCHMARKS.md).
                    rows = self._decision_rows(batch.node, batch.decisions, rate)
                    columns = (self._column_rows(batch.node, batch.columns, rate)
                               if batch.columns.time_ns else ())
                    before = self.db.conn.total_changes  # keys are in by now
                    self.db.conn.executemany(DECISION_INSERT, rows)
                    self.db.conn.executemany(DECISION_INSERT, columns)
                    repeated = count(batch) - (self.db.conn.total_changes - before)
                    self.db.table("counters").insert_all(
                        row for c in batch.counters
                        if (row := self._counter_row(batch.node, c)) is not None)
                    self.db.table("lost_events").insert_all(
                        row for lo in batch.lost
                        if (row := self._lost_row(batch.node, lo)) is not None)
            except BaseException:
                self._drop_epochs(batch.node, new_epochs)
                for node, h, rt, raw in self._new_keys:  # ids of a rolled-back insert
                    self._keys.get((node, h, rt), {}).pop(raw, None)
                raise
            finally:
                self._new_keys.clear()
            if repeated:
                self.repeated_decisions += repeated
                log.warning("batch %d from %s: %d decisions were stored already (same time, "
                            "service port, endpoint, client and conntrack id): kept once",
                            batch.seq, batch.agent_id, repeated)
        return True

    def _add_epochs(self, node: str, epochs: list[tuple[int, str]]) -> None:
        times, hashes = self._epochs.setdefault(node, ([], []))
        for t, h in epochs:
            i = bisect.bisect_right(times, t)
            times.insert(i, t)
            hashes.insert(i, h)

    def _drop_epochs(self, node: str, epochs: list[tuple[int, str]]) -> None:
        times, hashes = self._epochs.get(node, ([], []))
        for t, h in epochs:
            for i in range(len(times)):
                if times[i] == t and hashes[i] == h:
                    del times[i], hashes[i]
                    break

    def _decision_rows(self, node: str, decisions: Any, rate: int) -> list[tuple[Any, ...]]:
        """Rows for DECISION_INSERT: the collector's hottest loop (BENCHMARKS.md). Per
        decision, two C-level field reads, a dict lookup of its key (node, service port,
        endpoint, source, event under this batch's rules version and sampling rate) and
        one tuple; a key is checked, named and stored the first time it is seen. Only
        NEW and DESTROY events are sampled; table dumps ship every entry."""
        if not decisions:
            return []
        times = [d.time_ns for d in decisions]
        if max(d.client_port for d in decisions) > 65535:
            raise BatchRejected("decision with a port above 65535")
        # The rules version of the batch's epoch, when the whole batch is in one (almost
        # always); else per decision.
        epochs, _ = self._epochs.get(node, ([], []))
        i = bisect.bisect_right(epochs, min(times))
        hi = epochs[i] if i < len(epochs) else 1 << 63
        rows = []
        one_epoch = max(times) < hi
        h = self.rules_at(node, times[0])
        cache = self._keys.get((node, h, rate), {})
        for d, t in zip(decisions, times, strict=True):
            if not one_epoch:
                h = self.rules_at(node, t)
                cache = self._keys.get((node, h, rate), {})
            info = cache.get(KEY_OF(d))
            if info is None:
                info = self._new_key(node, h, rate, KEY_OF(d))
                cache = self._keys[(node, h, rate)]
            rows.append(ROW_OF(d) + info)
        return rows

    def _column_rows(self, node: str, cols: pb.DecisionColumns,
                     rate: int) -> Iterable[tuple[Any, ...]]:
        """Rows for DECISION_INSERT from columns (what agents send): the key work is
        done once per key of the batch, and the rows are zipped together in C."""
        n = len(cols.time_ns)
        times = list(cols.time_ns)
        if max(cols.client_port) > 65535:
            raise BatchRejected("decision with a port above 65535")
        keys = [KEY_OF(k) for k in cols.keys]
        epochs, _ = self._epochs.get(node, ([], []))
        first = min(times)
        i = bisect.bisect_right(epochs, first)
        if max(times) < (epochs[i] if i < len(epochs) else 1 << 63):  # one rules version
            h = self.rules_at(node, first)
            infos = [self._key_info(node, h, rate, k) for k in keys]
            ids, rates = [x[0] for x in infos], [x[1] for x in infos]
            key_ids = [ids[k] for k in cols.key_index]
            sample_rates = [rates[k] for k in cols.key_index]
        else:
            per_row = [self._key_info(node, self.rules_at(node, t), rate, keys[k])
                       for t, k in zip(times, cols.key_index, strict=True)]
            key_ids, sample_rates = [x[0] for x in per_row], [x[1] for x in per_row]
        return zip(times, cols.client_ip, cols.client_port, cols.ct_id,
                   *(column(cols, c, n) for c in OPTIONAL),
                   key_ids, sample_rates, strict=True)

    def _key_info(self, node: str, h: str, rate: int, raw: tuple[Any, ...]) -> tuple[int, int]:
        info = self._keys.get((node, h, rate), {}).get(raw)
        return info if info is not None else self._new_key(node, h, rate, raw)

    def _new_key(self, node: str, h: str, rate: int,
                 raw: tuple[Any, ...]) -> tuple[int, int]:
        """Check a key seen for the first time, find or add its row, and cache
        (key id, sample rate of its event)."""
        proto, vip, vport, eip, eport, src, ev = raw
        if ev not in EVENTS or src not in SOURCES:
            raise BatchRejected(f"decision with unknown event {ev} or source {src}")
        if not vip or not eip or not proto:
            raise BatchRejected("decision without vip, endpoint or protocol")
        if vport > 65535 or eport > 65535:
            raise BatchRejected("decision with a port above 65535")
        if sum(map(len, self._keys.values())) >= MAX_CACHED_KEYS:
            self._keys.clear()  # a churning cluster: start the cache over
        key = (node, proto, vip, vport, endpoint_key(eip, eport), SOURCES[src], EVENTS[ev], h)
        self.db.execute(KEY_INSERT, key)
        info = (int(self.db.execute(KEY_SELECT, key).fetchone()[0]),
                rate if ev in _SAMPLED else 1)
        self._keys.setdefault((node, h, rate), {})[raw] = info
        self._new_keys.append((node, h, rate, raw))
        return info

    def _counter_row(self, node: str, c: pb.CounterDelta) -> dict[str, Any] | None:
        """The increase over the last stored total for this epoch and key (None if
        nothing new): a counter resent after a restart, or an older total arriving
        late, adds nothing."""
        key = {"node": node, "epoch": c.epoch, "protocol": c.protocol, "vip": c.vip,
               "vip_port": c.vip_port, "endpoint": endpoint_key(c.endpoint_ip, c.endpoint_port)}
        totals = dict(zip(COUNTER_COLUMNS, (
            c.total_connections, c.total_closed, c.total_orig_packets, c.total_orig_bytes,
            c.total_reply_packets, c.total_reply_bytes, c.total_duration_ns), strict=True))
        cols = ", ".join(COUNTER_COLUMNS)
        last = self.db.execute(
            f"SELECT {cols} FROM counter_totals WHERE node=? AND epoch=? AND protocol=? "
            "AND vip=? AND vip_port=? AND endpoint=?", list(key.values())).fetchone()
        increase = {k: totals[k] - (last[i] if last else 0)
                    for i, k in enumerate(COUNTER_COLUMNS)}
        if not any(v > 0 for v in increase.values()):
            return None
        if any(v < 0 for v in increase.values()):
            raise BatchRejected(f"counter total went backwards within epoch {c.epoch}")
        self.db.table("counter_totals").upsert({**key, **totals}, pk=tuple(key))
        return {**key, "window_start_ns": c.window_start_ns, "window_end_ns": c.window_end_ns,
                "rules_hash": self.rules_at(node, c.window_end_ns),
                "source": SOURCES.get(c.source, "ebpf"), **increase}

    def _lost_row(self, node: str, lo: pb.LostEvents) -> dict[str, Any] | None:
        source = SOURCES.get(lo.source, "unknown")
        count = lo.count
        if lo.epoch:  # cumulative within the epoch: store the increase only
            key = {"node": node, "epoch": lo.epoch, "source": source, "reason": lo.reason}
            last = self.db.execute(
                "SELECT total FROM lost_totals WHERE node=? AND epoch=? AND source=? AND "
                "reason=?", list(key.values())).fetchone()
            count = lo.total - (last[0] if last else 0)
            if count <= 0:
                return None
            self.db.table("lost_totals").upsert({**key, "total": lo.total}, pk=tuple(key))
        return {"node": node, "time_ns": lo.time_ns, "source": source, "reason": lo.reason,
                "count": count, "recovered": lo.recovered}

    def pod_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                      now: int) -> None:
        """The Kubernetes watch's changes: (ip, holder) pairs that start or stop now."""
        self._intervals("pods", opened, closed, now, with_node=True)

    def service_intervals(self, opened: list[tuple[str, Any]], closed: list[tuple[str, Any]],
                          now: int) -> None:
        self._intervals("services", opened, closed, now, with_node=False)

    def _intervals(self, table: str, opened: list[tuple[str, Any]],
                   closed: list[tuple[str, Any]], now: int, with_node: bool) -> None:
        if not opened and not closed:
            return
        col = "ip" if table == "pods" else "vip"
        with self.lock, self.db.atomic():
            for ip, h in closed:
                self.db.execute(f"UPDATE {table} SET to_ns = ? WHERE {col} = ? AND "
                                "namespace = ? AND name = ? AND to_ns IS NULL",
                                [now, ip, h.namespace, h.name])
            for ip, h in opened:
                row = {col: ip, "namespace": h.namespace, "name": h.name, "from_ns": now,
                       "to_ns": None}
                if with_node:
                    row["node"] = h.node
                self.db.table(table).insert(row)

    def add_k8s_epoch(self, namespace: str, name: str, endpoints: str, now: int) -> None:
        """A Service's endpoint set changed: every node's rules get a new version from
        now (same model, tagged), so decisions before and after are judged apart even
        before kube-proxy has rewritten the node's rules."""
        tag = hashlib.sha256(f"{namespace}/{name}\n{endpoints}".encode()).hexdigest()[:12]
        with self.lock, self.db.atomic():
            self.db.table("endpoint_epochs").insert({"namespace": namespace, "name": name,
                                                     "time_ns": now, "endpoints": endpoints})
            for node in list(self._epochs):
                current = self.rules_at(node, now)
                row = self.db.execute("SELECT mode, model FROM rule_snapshots WHERE node = ? "
                                      "AND hash = ? LIMIT 1", [node, current]).fetchone()
                if row is None:
                    continue
                tagged = f"{current.split('@', 1)[0]}@k8s:{tag}"
                self.db.table("rule_snapshots").insert({
                    "node": node, "time_ns": now, "hash": tagged, "mode": row[0],
                    "model": row[1]}, ignore=True)
                self._add_epochs(node, [(now, tagged)])

    def record_pods(self, pods: Iterable[PodRecord]) -> None:
        """Who owned each IP and when (the lab, later the Kubernetes watch, fills this)."""
        with self.lock:
            self.db.table("pods").insert_all(
                {"ip": p.ip, "namespace": p.namespace, "name": p.name, "node": p.node,
                 "from_ns": p.from_ns, "to_ns": p.to_ns} for p in pods)


def _model_json(r: pb.RuleSnapshot) -> dict[str, Any]:
    services = []
    for s in r.services:
        services.append({
            "service": s.service, "kind": s.kind, "vip": s.vip, "port": s.port,
            "protocol": s.protocol, "affinity": s.affinity, "policy": s.policy, "chain": s.chain,
            "scheduler": s.scheduler or "random",
            "endpoints": [{"endpoint": e.endpoint, "probability": e.probability,
                           "chain": e.chain} for e in s.endpoints]})
    return {"mode": r.mode, "hash": r.hash, "services": services}


