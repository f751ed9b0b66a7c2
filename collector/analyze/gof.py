"""Goodness of fit of observed endpoint counts to the declared shares.

Chi-square when every expected count is at least 5 (its asymptotics hold); otherwise
the exact multinomial test when the outcomes can be enumerated, else a Monte-Carlo
test on the chi-square statistic with a fixed seed (reproducible reports).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_EXPECTED = 5.0
EXACT_MAX_OUTCOMES = 200_000
MC_DRAWS = 20_000


@dataclass(frozen=True)
class TestResult:
    method: str
    statistic: float
    dof: int
    p_value: float


def chi_square_stat(observed: Sequence[int], expected: Sequence[float]) -> float:
    return float(sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True)))


def _compositions(n: int, k: int) -> Iterator[tuple[int, ...]]:
    if k == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, k - 1):
            yield (first, *rest)


def exact_multinomial(observed: Sequence[int], probs: Sequence[float]) -> float:
    """P(an outcome at most as likely as the observed one) under the declared shares."""
    n = sum(observed)
    logp = [math.log(p) for p in probs]
    lgn = math.lgamma(n + 1)

    def loglik(x: Sequence[int]) -> float:
        return lgn + sum(xi * lp - math.lgamma(xi + 1) for xi, lp in zip(x, logp, strict=True))

    obs = loglik(observed)
    tol = 1e-9 * max(1.0, abs(obs))
    total = sum(math.exp(ll) for x in _compositions(n, len(probs))
                if (ll := loglik(x)) <= obs + tol)
    return min(1.0, total)


def monte_carlo(observed: Sequence[int], probs: Sequence[float], draws: int = MC_DRAWS,
                seed: int = 0) -> float:
    n = sum(observed)
    expected = [n * p for p in probs]
    obs = chi_square_stat(observed, expected)
    sims = np.random.default_rng(seed).multinomial(n, probs, size=draws)
    e = np.asarray(expected)
    sim_stats = ((sims - e) ** 2 / e).sum(axis=1)
    return float((1 + np.count_nonzero(sim_stats >= obs - 1e-9)) / (draws + 1))


def goodness_of_fit(observed: Sequence[int], probs: Sequence[float]) -> TestResult:
    """Test counts against shares (all shares > 0, at least two categories)."""
    if len(observed) != len(probs) or len(probs) < 2:
        raise ValueError("need at least two categories with matching shares")
    total_p = sum(probs)
    probs = [p / total_p for p in probs]
    n = sum(observed)
    expected = [n * p for p in probs]
    dof = len(probs) - 1
    stat = chi_square_stat(observed, expected)
    if min(expected) >= MIN_EXPECTED:
        return TestResult("chi-square", stat, dof, float(stats.chi2.sf(stat, dof)))
    if math.comb(n + len(probs) - 1, len(probs) - 1) <= EXACT_MAX_OUTCOMES:
        return TestResult("exact-multinomial", stat, dof, exact_multinomial(observed, probs))
    return TestResult("monte-carlo", stat, dof, monte_carlo(observed, probs))


def min_achievable_p(n: int, probs: Sequence[float]) -> float:
    """The smallest p-value any outcome of n trials could give (all in the rarest)."""
    return min(probs) ** n if n else 1.0
