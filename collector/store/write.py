"""What a batch becomes in rows, for every backend: decision keys and their ids, the
rules version each decision is stamped with, counter and loss increases.

A backend supplies the statements (``_exec``, ``_fetch``, ``_insert_decisions``) and the
transaction around ``_store``; the SQL here is spelled the same in SQLite and
PostgreSQL (``?`` for each parameter, ``ON CONFLICT`` for upserts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from natlens.collector.store.epochs import RulesEpochs
from natlens.collector.store.schema import COUNTER_COLUMNS, DECISION_KEY
from natlens.collector.store.validate import check_key, model_json
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import KEY_OF, OPTIONAL, column, count
from natlens.proto.names import EVENTS, SOURCES, endpoint_key

log = logging.getLogger("natlens.collector.store")

KEY_INSERT = (f"INSERT INTO decision_keys ({', '.join(DECISION_KEY)}) "
              f"VALUES ({', '.join('?' * len(DECISION_KEY))}) ON CONFLICT DO NOTHING")
KEY_SELECT = (f"SELECT id FROM decision_keys WHERE "
              f"{' AND '.join(f'{c} = ?' for c in DECISION_KEY)}")
MAX_CACHED_KEYS = 1_000_000
_SAMPLED = (pb.EVENT_NEW, pb.EVENT_DESTROY)
_COUNTER_KEY = ("node", "epoch", "protocol", "vip", "vip_port", "endpoint")
_COUNTER_ROW = (*_COUNTER_KEY, "window_start_ns", "window_end_ns", "rules_hash", "source",
                *COUNTER_COLUMNS)
_BATCH_ROW = ("agent_id", "boot_id", "seq", "node", "received_ns", "records")
_LOST_ROW = ("node", "time_ns", "source", "reason", "count", "recovered")


def insert_sql(table: str, columns: Iterable[str], conflict: str = "") -> str:
    cols = list(columns)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            + (f" ON CONFLICT {conflict}" if conflict else ""))


def upsert_sql(table: str, key: tuple[str, ...], values: tuple[str, ...]) -> str:
    return insert_sql(table, (*key, *values), f"({', '.join(key)}) DO UPDATE SET " + ", ".join(
        f"{c} = excluded.{c}" for c in values))


class BatchWriter:
    """The rows of a batch; the backend runs ``_store`` in one transaction."""

    epochs: RulesEpochs
    repeated_decisions: int

    def _init_writer(self, snapshots: Iterable[tuple[str, int, str]]) -> None:
        # decision key → (its id in decision_keys, sample rate); ids taken in an open
        # transaction are in _new_keys until it commits: a rollback takes them away
        self._keys: dict[tuple[str, str, int], dict[tuple[Any, ...], tuple[int, int]]] = {}
        self._new_keys: list[tuple[str, str, int, tuple[Any, ...]]] = []
        self.epochs = RulesEpochs(snapshots)
        self.repeated_decisions = 0

    def rules_at(self, node: str, t: int) -> str:
        return self.epochs.at(node, t)

    # ---- what a backend provides (inside the write transaction)

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> int:
        """Run one statement; rows it changed."""
        raise NotImplementedError

    def _fetch(self, sql: str, args: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        raise NotImplementedError

    def _exec_many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _insert_decisions(self, rows: Iterable[tuple[Any, ...]], n: int) -> int:
        """Insert ``n`` rows of ``DECISION_ROW`` columns, those already stored (same
        identity) skipped; returns how many were inserted."""
        raise NotImplementedError

    # ---- shared

    def _forget(self, node: str, added: list[tuple[int, str]]) -> None:
        """A batch was rolled back: the versions and key ids it brought are not stored."""
        self.epochs.drop(node, added)
        for n, h, rate, raw in self._new_keys:
            self._keys.get((n, h, rate), {}).pop(raw, None)

    def _ingest_with(self, batch: pb.Batch, transaction: Callable[[], AbstractContextManager[Any]],
                     before: Callable[[], None] = lambda: None) -> bool:
        """Store ``batch`` in one ``transaction`` (``before`` runs first in it); False
        when its (agent, boot, sequence) row is there already: a resend, nothing written.
        Whatever fails, the rules versions and key ids it brought are forgotten."""
        added: list[tuple[int, str]] = []  # rules versions this batch brought
        try:
            with transaction():
                before()
                if not self._claim(batch):
                    return False
                self._store(batch, added)
        except BaseException:
            self._forget(batch.node, added)
            raise
        finally:
            self._new_keys.clear()
        return True

    def _claim(self, batch: pb.Batch) -> bool:
        """The batch's row, first in its transaction: a second writer of the same batch
        (a resend, another replica) finds it and stores nothing."""
        return bool(self._exec(insert_sql("batches", _BATCH_ROW, "DO NOTHING"), [
            batch.agent_id, batch.boot_id, batch.seq, batch.node, time.time_ns(),
            count(batch) + len(batch.rules) + len(batch.lost) + len(batch.counters)]))

    def _store(self, batch: pb.Batch, added: list[tuple[int, str]]) -> None:
        """Everything of ``batch`` but its ``batches`` row (``_claim``)."""
        epochs = []
        for r in batch.rules:
            self._exec(insert_sql("rule_snapshots", ("node", "time_ns", "hash", "mode", "model"),
                                  "DO NOTHING"),
                       [batch.node, r.time_ns, r.hash, r.mode, json.dumps(model_json(r))])
            epochs.append((r.time_ns, r.hash))
        added += self.epochs.add(batch.node, epochs)
        if batch.columns.time_ns:
            rows = self._column_rows(batch.node, batch.columns, max(batch.sample_rate, 1))
            n = count(batch)
            repeated = n - self._insert_decisions(rows, n)
            if repeated:
                self.repeated_decisions += repeated
                log.warning("batch %d from %s: %d decisions were stored already (same time, "
                            "service port, endpoint, client and conntrack id): kept once",
                            batch.seq, batch.agent_id, repeated)
        counters = [row for c in batch.counters
                    if (row := self._counter_row(batch.node, c)) is not None]
        if counters:
            self._exec_many(insert_sql("counters", _COUNTER_ROW), counters)
        lost = [row for lo in batch.lost if (row := self._lost_row(batch.node, lo)) is not None]
        if lost:
            self._exec_many(insert_sql("lost_events", _LOST_ROW), lost)

    def _column_rows(self, node: str, cols: pb.DecisionColumns,
                     rate: int) -> Iterable[tuple[Any, ...]]:
        """Rows of DECISION_ROW columns from columns (what agents send): the key work
        is done once per key of the batch, and the rows are zipped together in C."""
        n = len(cols.time_ns)
        times = list(cols.time_ns)
        keys = [KEY_OF(k) for k in cols.keys]
        first = min(times)
        if self.epochs.one_version(node, first, max(times)):
            h = self.epochs.at(node, first)
            infos = [self._key_info(node, h, rate, k) for k in keys]
            ids, rates = [x[0] for x in infos], [x[1] for x in infos]
            key_ids = [ids[k] for k in cols.key_index]
            sample_rates = [rates[k] for k in cols.key_index]
        else:
            per_row = [self._key_info(node, self.epochs.at(node, t), rate, keys[k])
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
        """Find or add the row of a key seen for the first time, and cache (key id,
        sample rate of its event)."""
        check_key(raw)
        proto, vip, vport, eip, eport, src, ev = raw
        if sum(map(len, self._keys.values())) >= MAX_CACHED_KEYS:
            self._keys.clear()  # a churning cluster: start the cache over
        key = (node, proto, vip, vport, endpoint_key(eip, eport), SOURCES[src], EVENTS[ev], h)
        self._exec(KEY_INSERT, key)
        found = self._fetch(KEY_SELECT, key)
        assert found is not None
        info = (int(found[0]), rate if ev in _SAMPLED else 1)
        self._keys.setdefault((node, h, rate), {})[raw] = info
        self._new_keys.append((node, h, rate, raw))
        return info

    def _counter_row(self, node: str, c: pb.CounterDelta) -> tuple[Any, ...] | None:
        """The increase over the last stored total for this epoch and key (None if
        nothing new): a counter resent after a restart, or an older total arriving
        late, adds nothing."""
        from natlens.collector.store.api import BatchRejected

        key = (node, c.epoch, c.protocol, c.vip, c.vip_port,
               endpoint_key(c.endpoint_ip, c.endpoint_port))
        totals = (c.total_connections, c.total_closed, c.total_orig_packets,
                  c.total_orig_bytes, c.total_reply_packets, c.total_reply_bytes,
                  c.total_duration_ns)
        last = self._fetch(
            f"SELECT {', '.join(COUNTER_COLUMNS)} FROM counter_totals WHERE "
            + " AND ".join(f"{k} = ?" for k in _COUNTER_KEY), key)
        increase = [t - (last[i] if last else 0) for i, t in enumerate(totals)]
        if not any(v > 0 for v in increase):
            return None
        if any(v < 0 for v in increase):
            raise BatchRejected(f"counter total went backwards within epoch {c.epoch}")
        self._exec(upsert_sql("counter_totals", _COUNTER_KEY, COUNTER_COLUMNS), [*key, *totals])
        return (*key, c.window_start_ns, c.window_end_ns,
                self.epochs.at(node, c.window_end_ns), SOURCES.get(c.source, "ebpf"),
                *increase)

    def _lost_row(self, node: str, lo: pb.LostEvents) -> tuple[Any, ...] | None:
        source = SOURCES.get(lo.source, "unknown")
        n = lo.count
        if lo.epoch:  # cumulative within the epoch: store the increase only
            key = (node, lo.epoch, source, lo.reason)
            last = self._fetch("SELECT total FROM lost_totals WHERE node = ? AND epoch = ? AND "
                               "source = ? AND reason = ?", key)
            n = lo.total - (last[0] if last else 0)
            if n <= 0:
                return None
            self._exec(upsert_sql("lost_totals", ("node", "epoch", "source", "reason"),
                                  ("total",)), [*key, lo.total])
        return (node, lo.time_ns, source, lo.reason, n, lo.recovered)

    # ---- names (the lab, the Kubernetes watch)

    def _write_intervals(self, table: str, opened: list[tuple[str, Any]],
                         closed: list[tuple[str, Any]], now: int) -> None:
        col = "ip" if table == "pods" else "vip"
        for ip, h in closed:
            self._exec(f"UPDATE {table} SET to_ns = ? WHERE {col} = ? AND namespace = ? AND "
                       "name = ? AND to_ns IS NULL", [now, ip, h.namespace, h.name])
        for ip, h in opened:
            if table == "pods":
                self._exec(insert_sql("pods", ("ip", "namespace", "name", "node", "from_ns",
                                               "to_ns")),
                           [ip, h.namespace, h.name, h.node, now, None])
            else:
                self._exec(insert_sql("services", ("vip", "namespace", "name", "from_ns",
                                                   "to_ns")),
                           [ip, h.namespace, h.name, now, None])

    def _write_k8s_epoch(self, namespace: str, name: str, endpoints: str, now: int) -> None:
        """Every node's rules get a new version from now (same model, tagged), so
        decisions before and after are judged apart even before kube-proxy has
        rewritten the node's rules."""
        tag = hashlib.sha256(f"{namespace}/{name}\n{endpoints}".encode()).hexdigest()[:12]
        self._exec(insert_sql("endpoint_epochs", ("namespace", "name", "time_ns", "endpoints")),
                   [namespace, name, now, endpoints])
        for node in self.epochs.nodes():
            current = self.epochs.at(node, now)
            row = self._fetch("SELECT mode, model FROM rule_snapshots WHERE node = ? AND "
                              "hash = ? LIMIT 1", [node, current])
            if row is None:
                continue
            tagged = f"{current.split('@', 1)[0]}@k8s:{tag}"
            self._exec(insert_sql("rule_snapshots", ("node", "time_ns", "hash", "mode", "model"),
                                  "DO NOTHING"), [node, now, tagged, row[0], row[1]])
            self.epochs.add(node, [(now, tagged)])
