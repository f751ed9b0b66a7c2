"""Batches close at max_records whether decisions come one at a time or many at once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.ship.batch import Batcher
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, unpack


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
