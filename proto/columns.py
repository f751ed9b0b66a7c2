"""Decisions as rows in Python and as columns on the wire.

An agent keeps a batch's decisions as plain tuples and packs them into one
``DecisionColumns`` message when the batch closes; the store reads the columns back with
a few C-level conversions instead of a protobuf object per decision, which took the
store from 120,000-150,000 to 200,000-270,000 decisions/s here (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from natlens.proto import natlens_pb2 as pb


class DecisionRow(NamedTuple):
    """One decision: its key (``pb.DecisionKey``) and its row, field by field."""

    time_ns: int
    protocol: str
    client_ip: str
    client_port: int
    vip: str
    vip_port: int
    endpoint_ip: str
    endpoint_port: int
    ct_id: int = 0
    zone: int = 0
    source: pb.Source = pb.SOURCE_UNSPECIFIED
    event: pb.Event = pb.EVENT_UNSPECIFIED
    orig_packets: int = 0
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0
    duration_ns: int = 0


KEY_FIELDS = ("protocol", "vip", "vip_port", "endpoint_ip", "endpoint_port", "source", "event")
# Per-row columns: DecisionRow's order without the key, and the store's decision_rows order (its key
# id and sample rate follow); the counters (OPTIONAL) may be sent empty.
ROW_COLUMNS = ("time_ns", "client_ip", "client_port", "ct_id", "zone", "orig_packets",
               "orig_bytes", "reply_packets", "reply_bytes", "duration_ns")
OPTIONAL = ROW_COLUMNS[4:]
# A DecisionKey message's fields, and a DecisionRow's key.
KEY_OF = attrgetter(*KEY_FIELDS)
_ROW_KEY = itemgetter(*(DecisionRow._fields.index(f) for f in KEY_FIELDS))


class ColumnsError(ValueError):
    """Columns that do not line up: not a batch anyone can store."""


class Chunk(NamedTuple):
    """Decisions already in columns (a source that decodes in bulk: no row object per
    decision): its own keys (KEY_FIELDS tuples), each decision's index into them, and
    one list per ROW_COLUMNS name, all of one length."""

    keys: list[tuple[Any, ...]]
    key_index: list[int]
    values: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.key_index)

    def slice(self, start: int, stop: int) -> Chunk:
        """Decisions ``start`` to ``stop`` (the batcher cuts a chunk at batch limits)."""
        return Chunk(self.keys, self.key_index[start:stop],
                     {k: v[start:stop] for k, v in self.values.items()})


def pack(rows: Iterable[DecisionRow]) -> pb.DecisionColumns:
    """Columns for ``rows``, keys stored once each, all-zero counter columns left out."""
    return pack_parts([list(rows)])


def pack_parts(parts: Iterable[list[DecisionRow] | Chunk]) -> pb.DecisionColumns:
    """``pack`` for decisions handed over as rows and as chunks, in that order."""
    parts = [p for p in parts if len(p)]
    cols = pb.DecisionColumns()
    if not parts:
        return cols
    index: dict[tuple[Any, ...], int] = {}
    key_index: list[int] = []
    columns: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Chunk):
            remap = [index.setdefault(k, len(index)) for k in part.keys]
            key_index += [remap[i] for i in part.key_index]
            columns.append(part.values)
            continue
        for r in part:
            k = _ROW_KEY(r)
            i = index.get(k)
            if i is None:
                i = index[k] = len(index)
            key_index.append(i)
        columns.append(dict(zip(DecisionRow._fields, zip(*part, strict=True), strict=True)))
    cols.keys.extend(pb.DecisionKey(protocol=p, vip=v, vip_port=vp, endpoint_ip=e,
                                    endpoint_port=ep, source=s, event=ev)
                     for p, v, vp, e, ep, s, ev in index)
    cols.key_index.extend(key_index)
    for name in ROW_COLUMNS:
        values = [c[name] for c in columns]
        if name in OPTIONAL and not any(any(v) for v in values):
            continue
        column = getattr(cols, name)
        for v in values:
            column.extend(v)
    return cols


def count(batch: pb.Batch) -> int:
    """Decisions in a batch."""
    return len(batch.columns.time_ns)


def check(cols: pb.DecisionColumns) -> int:
    """The number of rows; raises ColumnsError unless every column lines up."""
    n = len(cols.time_ns)
    for name in ("key_index", *ROW_COLUMNS[1:]):
        if len(getattr(cols, name)) not in ((0, n) if name in OPTIONAL else (n,)):
            raise ColumnsError(f"decision column {name} has {len(getattr(cols, name))} "
                               f"values for {n} decisions")
    if n and max(cols.key_index) >= len(cols.keys):
        raise ColumnsError(f"decision key index {max(cols.key_index)} beyond the "
                           f"{len(cols.keys)} keys sent")
    return n


def column(cols: pb.DecisionColumns, name: str, n: int) -> Iterable[int]:
    """A counter column, zeros when it was left out."""
    values = getattr(cols, name)
    return values if len(values) else repeat(0, n)


def unpack(batch: pb.Batch) -> list[DecisionRow]:
    """Every decision of a batch as rows. For the paths that look at each decision
    (spool folding, tests); the store reads columns itself."""
    out: list[DecisionRow] = []
    cols = batch.columns
    n = check(cols)
    if not n:
        return out
    keys = [KEY_OF(k) for k in cols.keys]
    per_row = [column(cols, name, n) for name in ROW_COLUMNS]
    for ki, *vals in zip(cols.key_index, *per_row, strict=True):
        k = keys[ki]
        out.append(DecisionRow(vals[0], k[0], vals[1], vals[2], k[1], k[2], k[3], k[4],
                               vals[3], vals[4], k[5], k[6], *vals[5:]))
    return out
