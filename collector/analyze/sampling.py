"""How far a count scaled up from 1-in-N sampled decision records may be from the truth."""

from __future__ import annotations

import math

SAMPLED_Z = 4.0  # standard errors in a sampled count's stated error


def scaled_error(k: int, rate: int) -> float:
    """Four standard errors of k·rate as an estimate of n, when each of n connections
    is kept with probability 1/rate: Var(k·rate) = n(rate−1), estimated from the
    sample as (k + 16)·rate·(rate−1).

    Four, not three: the report says the true count lies within this, and at three an
    unbiased sampler lands outside for about 1 endpoint in 370 (the test suite met
    one, at 3.26); at four, about 1 in 16,000. The 16 (four squared) added to k keeps
    the estimate from understating the spread when few decisions were kept: with k
    itself, n = 2,000 sampled 1 in 100 fell outside 208 times in 100,000 (the
    simulation of tests/unit/test_stats.py, run by hand with k), with k + 16 never
    (that test)."""
    return SAMPLED_Z * math.sqrt((k + SAMPLED_Z ** 2) * rate * (rate - 1))
