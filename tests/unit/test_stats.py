"""Statistics: intervals, tests, Holm, verdicts; false-alarm rate and power by simulation."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from natlens.collector.analyze.gof import (
    exact_multinomial,
    goodness_of_fit,
    monte_carlo,
)
from natlens.collector.analyze.intervals import wilson
from natlens.collector.analyze.judge import judge, verdict
from natlens.collector.analyze.multiple import holm


@given(st.integers(0, 10_000), st.integers(1, 10_000))
def test_wilson_contains_the_estimate(k: int, n: int) -> None:
    k = min(k, n)
    lo, hi = wilson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1


def test_wilson_known_value() -> None:
    lo, hi = wilson(1003, 2000)
    assert (round(lo, 4), round(hi, 4)) == (0.4796, 0.5234)  # docs/report.md's example


def test_chi_square_matches_scipy() -> None:
    r = goodness_of_fit([1003, 997], [0.5, 0.5])
    ref = stats.chisquare([1003, 997], [1000, 1000])
    assert r.method == "chi-square" and r.dof == 1
    assert math.isclose(r.p_value, ref.pvalue) and math.isclose(r.statistic, ref.statistic)


def test_small_samples_use_the_exact_test() -> None:
    r = goodness_of_fit([3, 0], [0.5, 0.5])
    assert r.method == "exact-multinomial"
    assert math.isclose(r.p_value, 0.25)  # (3,0) and (0,3) each 1/8


@given(st.integers(1, 12), st.lists(st.floats(0.05, 1), min_size=2, max_size=4))
def test_exact_p_of_the_most_likely_outcome_is_one(n: int, w: list[float]) -> None:
    probs = [x / sum(w) for x in w]
    best = max(_all(n, len(probs)), key=lambda x: stats.multinomial.pmf(x, n, probs))
    assert exact_multinomial(best, probs) == pytest.approx(1.0, abs=1e-9)


def _all(n: int, k: int) -> list[list[int]]:
    if k == 1:
        return [[n]]
    return [[i, *rest] for i in range(n + 1) for rest in _all(n - i, k - 1)]


def test_monte_carlo_agrees_with_chi_square_when_both_apply() -> None:
    obs, probs = [520, 480], [0.5, 0.5]
    assert monte_carlo(obs, probs) == pytest.approx(goodness_of_fit(obs, probs).p_value, abs=0.02)


@pytest.mark.parametrize("probs", [[0.5, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5]])
def test_false_alarm_rate_is_alpha_on_fair_samples(probs: list[float]) -> None:
    rng = np.random.default_rng(7)
    sims, alpha = 2000, 0.05
    rejected = sum(goodness_of_fit(list(x), probs).p_value < alpha
                   for x in rng.multinomial(2000, probs, size=sims))
    sd = math.sqrt(alpha * (1 - alpha) / sims)
    assert abs(rejected / sims - alpha) < 4 * sd


def test_false_alarm_rate_of_the_exact_test_is_at_most_alpha() -> None:
    rng = np.random.default_rng(3)
    rejected = sum(goodness_of_fit(list(x), [0.5, 0.5]).p_value < 0.05
                   for x in rng.multinomial(8, [0.5, 0.5], size=2000))
    assert rejected / 2000 <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / 2000)


def test_power_at_60_40_with_2000_connections() -> None:
    rng = np.random.default_rng(11)
    detected = sum(goodness_of_fit(list(x), [0.5, 0.5]).p_value < 0.001
                   for x in rng.multinomial(2000, [0.6, 0.4], size=500))
    assert detected == 500


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_is_monotone_and_at_least_raw(ps: list[float]) -> None:
    adj = holm(ps)
    assert all(a >= p for a, p in zip(adj, ps, strict=True))
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    assert all(adj[order[i]] <= adj[order[i + 1]] for i in range(len(ps) - 1))
    assert all(a <= 1 for a in adj)


def test_verdicts() -> None:
    decl = [("a:80", 0.5), ("b:80", 0.5)]
    j = judge(decl, {"a:80": 1000, "b:80": 1000})
    assert verdict(j, j.test.p_value if j.test else None, 0.001) == "consistent"
    j = judge(decl, {"a:80": 1200, "b:80": 800})
    assert verdict(j, j.test.p_value if j.test else None, 0.001) == "skewed"
    j = judge(decl, {"a:80": 3})
    assert verdict(j, j.test.p_value if j.test else None, 0.001) == "insufficient-data"
    assert verdict(judge(decl, {}), None, 0.001) == "insufficient-data"
    j = judge(decl, {"a:80": 1000, "b:80": 1000, "c:80": 1})
    assert verdict(j, j.test.p_value if j.test else None, 0.001) == "undeclared"
    assert j.undeclared == [{"endpoint": "c:80", "observed": 1}]
    assert j.reasons == ["1 connections went to endpoints the rules do not declare"]
    # skewed among the declared endpoints as well: the skew is the verdict
    j = judge(decl, {"a:80": 1900, "b:80": 100, "c:80": 1})
    assert verdict(j, j.test.p_value if j.test else None, 0.001) == "skewed"
    j = judge([("a:80", 1.0)], {"a:80": 50})
    assert verdict(j, None, 0.001) == "consistent"


def _outside(n: int, rate: int, shrink: float = 1.0) -> int:
    """Of 100,000 seeded samplings (each of n kept with probability 1/rate), how many
    scaled counts miss n by more than ``shrink`` times the stated error."""
    from natlens.collector.analyze.sampling import scaled_error

    k = np.random.default_rng(7).binomial(n, 1 / rate, size=100_000)
    err = np.array([scaled_error(int(x), rate) for x in k]) * shrink
    return int(np.sum(np.abs(k * rate - n) > err))


@pytest.mark.parametrize("n,rate", [(25_000, 10), (50_000, 2), (2_000, 100), (300, 100),
                                    (100, 10)])
def test_a_sampled_count_s_stated_error_covers_an_unbiased_sampler(n: int, rate: int) -> None:
    """Four standard errors promise about 6.3 misses in 100,000; few kept decisions
    (k near 20, or 3) must not make it understate."""
    assert _outside(n, rate) <= 40  # 4 sd of a Poisson(6.3) count above it


def test_three_standard_errors_would_miss_one_endpoint_in_370() -> None:
    """Why the report states four: at three, about 270 in 100,000 fall outside."""
    assert 150 <= _outside(25_000, 10, shrink=3 / 4) <= 450
