"""Deterministic rotation (IPVS ``rr``/``wrr``): how far from its share may an endpoint be?

A rotating scheduler does not draw at random, so a goodness-of-fit test would call
perfect balance "too good" and never flag a small skew. Instead: over one cycle of
``C`` choices each endpoint gets exactly its ``n_i = share_i · C`` slots, so in any run
of N consecutive choices its count differs from ``N · share_i`` by less than one cycle's
worth at each end (bound 2·n_i). ``rr`` (all ``n_i`` = 1) is tighter: counts are ⌊N/k⌋
or ⌈N/k⌉, never further than (k−1)/k from N/k.
Anything outside the bound is not that rotation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class RotationCheck:
    statistic: float            # the largest |observed − N·share| / bound; ≤ 1 is consistent
    bounds: tuple[float, ...]   # per endpoint, in declared order
    consistent: bool


def cycle_slots(shares: Sequence[float]) -> list[int]:
    """Each endpoint's choices per cycle (the weights over their gcd)."""
    fr = [Fraction(s).limit_denominator(1 << 16) for s in shares]
    live = [f for f in fr if f > 0]
    if not live:
        return [0] * len(fr)
    cycle = math.lcm(*(f.denominator for f in live))
    return [int(f * cycle) for f in fr]


def rotation_bounds(shares: Sequence[float]) -> list[float]:
    slots = cycle_slots(shares)
    if all(s <= 1 for s in slots):
        k = sum(slots)
        return [(k - 1) / k if s else 0.0 for s in slots]
    return [2.0 * s for s in slots]


def check_rotation(counts: Sequence[int], shares: Sequence[float]) -> RotationCheck:
    n = sum(counts)
    bounds = rotation_bounds(shares)
    # Weight-0 endpoints (bound 0) are left to the judge: any traffic there is impossible.
    worst = max((abs(c - n * s) / b for c, s, b in zip(counts, shares, bounds, strict=True)
                 if b > 0), default=0.0)
    return RotationCheck(worst, tuple(bounds), worst <= 1.0 + 1e-9)
