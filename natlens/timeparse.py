"""Durations (``30m``, ``1h30m``, ``7d``) and RFC 3339 times to nanoseconds and back
(pure): the one place times are parsed and formatted for people."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_ns(text: str) -> int:
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 30m, 2h or 7d")
    return int(sum(float(n) * UNITS[u] for n, u in parts) * 1e9)


def time_ns(text: str) -> int:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time like 2026-11-24T03:12:00Z"
                         ) from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +01:00)")
    # integer arithmetic: a float timestamp would round nanoseconds a microsecond astray
    return (t - EPOCH) // timedelta(microseconds=1) * 1000


def rfc3339(ns: int) -> str:
    """``2026-11-24T03:12:00.000Z``: milliseconds, UTC."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
