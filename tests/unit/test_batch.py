"""Batches close at max_records whether decisions come one at a time or many at once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.ship.batch import Batcher
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import ROW_COLUMNS, Chunk, DecisionRow, unpack


def rows(n: int) -> list[DecisionRow]:
    return [DecisionRow(i, "tcp", "10.244.1.169", 1024 + i, "10.1.122.241", 9999,
                        "10.244.2.74", 80, i, 0, pb.SOURCE_EBPF, pb.EVENT_NEW)
            for i in range(n)]


@given(chunks=st.lists(st.integers(0, 50), max_size=20), limit=st.integers(1, 30))
def test_many_at_once_batches_like_one_at_a_time(chunks: list[int], limit: int) -> None:
    got: list[pb.Batch] = []
    one: list[pb.Batch] = []
    many, single = (Batcher("a", "n", got.append, max_records=limit),
                    Batcher("a", "n", one.append, max_records=limit))
    all_rows = rows(sum(chunks))
    at = 0
    for size in chunks:
        chunk = all_rows[at:at + size]
        many.add_decisions(chunk)
        assert len(chunk) == size  # the caller's list is left as it was
        for r in chunk:
            single.add_decision(r)
        at += size
    many.flush()
    single.flush()
    sizes = [len(unpack(b)) for b in got]
    assert sizes == [len(unpack(b)) for b in one]
    assert all(s <= limit for s in sizes) and all(s == limit for s in sizes[:-1])
    assert [r for b in got for r in unpack(b)] == all_rows


def as_chunk(rs: list[DecisionRow]) -> Chunk:
    """Rows in the columnar form a bulk decoder hands over (keys deliberately not
    shared with other chunks: packing must merge them)."""
    keys = sorted({KEY_OF_ROW(r) for r in rs})
    return Chunk(keys, [keys.index(KEY_OF_ROW(r)) for r in rs],
                 {name: [getattr(r, name) for r in rs] for name in ROW_COLUMNS})


def KEY_OF_ROW(r: DecisionRow) -> tuple[object, ...]:
    return (r.protocol, r.vip, r.vip_port, r.endpoint_ip, r.endpoint_port, r.source, r.event)


@given(parts=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=12),
       limit=st.integers(1, 30))
def test_chunks_and_rows_mixed_batch_like_rows_alone(parts: list[tuple[bool, int]],
                                                     limit: int) -> None:
    """Columns handed over in chunks (split at the batch limit) and rows, in any mix,
    make the batches the same rows would."""
    got: list[pb.Batch] = []
    b = Batcher("a", "n", got.append, max_records=limit)
    all_rows = [r._replace(endpoint_ip=f"10.0.0.{r.time_ns % 3}",
                           orig_bytes=r.time_ns % 2) for r in rows(sum(n for _, n in parts))]
    at = 0
    for columnar, size in parts:
        part = all_rows[at:at + size]
        b.add_columns(as_chunk(part)) if columnar else b.add_decisions(part)
        at += size
    b.flush()
    sizes = [len(unpack(x)) for x in got]
    assert all(s <= limit for s in sizes) and all(s == limit for s in sizes[:-1])
    assert [r for x in got for r in unpack(x)] == all_rows
