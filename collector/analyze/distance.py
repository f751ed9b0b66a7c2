"""How far the observed split is from the declared one, in connections or in bytes."""

from __future__ import annotations

from collections.abc import Iterable


def tvd(observed: dict[str, int], declared: dict[str, float]) -> float | None:
    """Total variation distance between observed and declared shares: the fraction of
    connections that would have to go elsewhere to match the rules exactly. Endpoints
    the rules do not declare count as declared 0. None without any connection."""
    total = sum(observed.values())
    if not total:
        return None
    names: Iterable[str] = set(observed) | set(declared)
    return round(sum(abs(observed.get(e, 0) / total - declared.get(e, 0.0))
                     for e in names) / 2, 6)
