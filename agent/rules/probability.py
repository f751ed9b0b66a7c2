"""Effective endpoint shares from iptables' `statistic --mode random` rules.

The kernel does not keep the probability kube-proxy wrote: libxt_statistic stores
``lround(p * 2**31)`` and xt_statistic matches when ``(random & 0x7fffffff) < stored``.
So ``0.3333333333`` (what kube-proxy writes) and ``0.33333333302`` (what iptables-save
prints back) are the same rule, and the share we declare must be the kernel's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction

SCALE = 1 << 31


def kernel_probability(written: float) -> Fraction:
    """The match probability the kernel really applies for a written ``--probability``."""
    if not 0.0 <= written <= 1.0 or math.isnan(written):
        raise ValueError(f"probability {written!r} outside [0, 1]")
    stored = math.floor(written * SCALE + 0.5)  # C lround: halves away from zero
    return Fraction(stored, SCALE)


def kube_proxy_probability(n: int, i: int) -> str:
    """What kube-proxy writes for rule i of n endpoints: ``%0.10f`` of ``1/(n-i)``."""
    return f"{1.0 / (n - i):0.10f}"


def effective_shares(rule_probs: Sequence[Fraction | None]) -> list[Fraction]:
    """Share of each rule in a chain where rule i is tried only if all earlier missed.

    ``None`` is an unconditional rule: it takes everything left, and any rule after it
    is unreachable (share 0). Every service with n endpoints has the same rules, so the
    shares are computed once per sequence.
    """
    return list(_shares(tuple(rule_probs)))


@functools.lru_cache(maxsize=4096)
def _shares(rule_probs: tuple[Fraction | None, ...]) -> tuple[Fraction, ...]:
    shares: list[Fraction] = []
    remaining = Fraction(1)
    for p in rule_probs:
        take = remaining if p is None else remaining * p
        shares.append(take)
        remaining -= take
    return tuple(shares)
