"""Durations and RFC 3339 times, to the nanosecond the format can carry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natlens.timeparse import duration_ns, time_ns


@given(st.integers(0, 4_000_000_000 * 10**9))
def test_a_printed_time_parses_back_to_its_microsecond(t: int) -> None:
    dt = datetime.fromtimestamp(t // 10**9, UTC).replace(microsecond=t % 10**9 // 1000)
    assert time_ns(dt.isoformat()) == t // 1000 * 1000
    assert time_ns(dt.isoformat().replace("+00:00", "Z")) == t // 1000 * 1000


def test_offsets_and_durations() -> None:
    assert time_ns("2026-11-24T04:12:00+01:00") == time_ns("2026-11-24T03:12:00Z")
    assert duration_ns("1h30m") == 5400 * 10**9 and duration_ns("0.5s") == 5 * 10**8
    for bad in ("yesterday", "1h 30m", "", "5x"):
        with pytest.raises(ValueError, match="not a duration"):
            duration_ns(bad)
    with pytest.raises(ValueError, match="no time zone"):
        time_ns("2026-11-24T03:12:00")
    with pytest.raises(ValueError, match="RFC 3339"):
        time_ns("last tuesday")
