"""The report's other statistics: node against node, the distance from the declared
split, and which source a node is counted from (pure functions, property-tested)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natlens.collector.analyze.distance import tvd
from natlens.collector.analyze.homogeneity import homogeneity
from natlens.collector.analyze.sources import OLDER, pick

EPS = ("a", "b", "c")


def test_the_same_split_on_two_nodes_is_the_same() -> None:
    h = homogeneity({"n1": {"a": 103, "b": 97}, "n2": {"a": 96, "b": 104}}, 0.001)
    assert h is not None and h.verdict == "same" and h.dof == 1


def test_a_node_that_sends_everything_one_way_is_different() -> None:
    h = homogeneity({"n1": {"a": 200, "b": 200}, "n2": {"a": 400, "b": 0}}, 0.001)
    assert h is not None and h.verdict == "different" and h.p_value < 1e-50


def test_small_expected_counts_are_insufficient_and_nothing_to_test_is_none() -> None:
    h = homogeneity({"n1": {"a": 3, "b": 1}, "n2": {"a": 1, "b": 3}}, 0.001)
    assert h is not None and h.verdict == "insufficient-data"
    assert homogeneity({"n1": {"a": 5}, "n2": {"a": 9}}, 0.001) is None          # one endpoint
    assert homogeneity({"n1": {"a": 5, "b": 5}, "n2": {}}, 0.001) is None        # a silent node
    assert homogeneity({"n1": {"a": 5, "b": 5}}, 0.001) is None                  # one node


@given(st.lists(st.lists(st.integers(5, 500), min_size=3, max_size=3), min_size=2,
                max_size=4), st.permutations(range(3)))
def test_homogeneity_does_not_depend_on_the_order_of_names(
        table: list[list[int]], order: list[int]) -> None:
    by_node = {f"n{i}": dict(zip(EPS, row, strict=True)) for i, row in enumerate(table)}
    shuffled = {f"m{i}": {EPS[order[j]]: row[j] for j in range(3)}
                for i, row in reversed(list(enumerate(table)))}
    a, b = homogeneity(by_node, 0.001), homogeneity(shuffled, 0.001)
    assert a is not None and b is not None
    assert a.statistic == pytest.approx(b.statistic) and a.dof == b.dof == (len(table) - 1) * 2
    assert 0 <= a.p_value <= 1


@given(st.lists(st.integers(1, 400), min_size=2, max_size=3).map(np.array))
def test_proportional_nodes_are_never_different(row: np.ndarray) -> None:  # type: ignore[type-arg]
    h = homogeneity({"n1": dict(zip(EPS, row.tolist(), strict=False)),
                     "n2": dict(zip(EPS, (row * 3).tolist(), strict=False))}, 0.001)
    assert h is not None and h.statistic == pytest.approx(0, abs=1e-9) and h.verdict != "different"


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=6), st.data())
def test_tvd_is_a_distance_in_0_1(counts: list[int], data: st.DataObject) -> None:
    weights = data.draw(st.lists(st.integers(1, 10), min_size=len(counts),
                                 max_size=len(counts)))
    declared = {f"e{i}": w / sum(weights) for i, w in enumerate(weights)}
    observed = {f"e{i}": c for i, c in enumerate(counts)}
    d = tvd(observed, declared)
    if sum(counts) == 0:
        assert d is None
        return
    assert d is not None and 0 <= d <= 1
    assert tvd({e: round(s * 10**6) for e, s in declared.items()}, declared) == pytest.approx(
        0, abs=1e-5)
    # connections to an endpoint the rules do not declare move the split away
    extra = tvd(observed | {"stray": sum(counts)}, declared)
    assert extra is not None and extra >= 0.5


def test_tvd_of_everything_to_one_of_two_is_a_half() -> None:
    assert tvd({"a": 10, "b": 0}, {"a": 0.5, "b": 0.5}) == 0.5


@given(st.dictionaries(st.sampled_from(["ebpf", "netlink", "pcap", OLDER]),
                       st.dictionaries(st.sampled_from(EPS), st.integers(0, 50), min_size=1),
                       min_size=1))
def test_a_node_is_counted_from_its_most_exact_source_plus_older_rollups(
        by_source: dict[str, dict[str, int]]) -> None:
    chosen, counts = pick(by_source)
    named = [s for s in ("ebpf", "netlink", "pcap") if s in by_source]
    assert chosen == (named[0] if named else OLDER)
    for ep in EPS:
        want = by_source.get(OLDER, {}).get(ep, 0) + (
            by_source[chosen].get(ep, 0) if chosen != OLDER else 0)
        assert counts.get(ep, 0) == want
