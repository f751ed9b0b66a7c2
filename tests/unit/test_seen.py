"""Telling a recovered conntrack entry from one already seen, when ids are recycled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.sources.seen import SeenIds


def test_unseen_id_is_not_known() -> None:
    assert not SeenIds().known(0, 7, 0)


@given(read_at=st.integers(1, 2**62), created_before=st.integers(0, 10**9))
def test_entry_read_as_new_event_is_known_in_a_later_dump(read_at: int,
                                                          created_before: int) -> None:
    seen = SeenIds()
    seen.add(0, 7, read_at)
    assert seen.known(0, 7, max(read_at - created_before, 1))


def test_recycled_id_with_a_later_start_is_a_different_connection() -> None:
    seen = SeenIds()
    seen.add(0, 7, 1_000)           # NEW event read at t=1000
    assert not seen.known(0, 7, 1_001)
    seen.add(0, 8, 0)               # first met in a dump, no timestamp extension
    assert seen.known(0, 8, 0)
    assert not seen.known(0, 8, 5)  # the port was reused: the kernel made a new entry


def test_zones_are_separate_and_the_set_is_bounded() -> None:
    seen = SeenIds(limit=2)
    seen.add(1, 7, 10)
    assert not seen.known(2, 7, 0)
    seen.add(0, 1, 10)
    seen.add(0, 2, 10)
    assert not seen.known(1, 7, 0)  # oldest dropped
    assert seen.known(0, 1, 0) and seen.known(0, 2, 0)


def test_destroyed_entries_are_forgotten_unless_their_id_was_reused() -> None:
    seen = SeenIds()
    seen.add(0, 7, 1_000)            # NEW read at 1000
    seen.forget(0, 7, 5_000)         # DESTROY: ended at 5000, after it was seen
    assert len(seen) == 0 and not seen.known(0, 7, 0)
    seen.add(0, 9, 8_000)            # the id of an entry that ended at 7000 was reused,
    seen.forget(0, 9, 7_000)         # and the new NEW was read before the old DESTROY
    assert seen.known(0, 9, 7_500)
    seen.forget(0, 11, 0)            # never seen: nothing to do
    assert len(seen) == 1


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=300))
def test_the_set_is_as_big_as_the_live_table(events: list[tuple[int, bool]]) -> None:
    seen, live, t = SeenIds(), set(), 0
    for ct_id, is_new in events:
        t += 10
        if is_new:
            seen.add(0, ct_id, t)
            live.add(ct_id)
        elif ct_id in live:
            seen.forget(0, ct_id, t)
            live.discard(ct_id)
    assert len(seen) == len(live)
