from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.rules.probability import (
    SCALE,
    effective_shares,
    kernel_probability,
    kube_proxy_probability,
)


@given(st.integers(0, SCALE))
def test_iptables_save_printing_round_trips_to_the_stored_value(stored: int) -> None:
    printed = f"{stored / SCALE:.11f}"  # libxt_statistic's print format
    assert kernel_probability(float(printed)) == Fraction(stored, SCALE)


def test_both_spellings_of_a_third_give_their_kernel_value() -> None:
    # kube-proxy writes %0.10f of 1/3; iptables-save prints back what the kernel kept.
    written = kernel_probability(float("0.3333333333"))
    assert written == Fraction(715827883, SCALE)
    assert f"{float(written):.11f}" == "0.33333333349"
    assert kernel_probability(float("0.33333333349")) == written


@given(st.integers(1, 300))
def test_kube_proxy_shares_are_uniform_to_the_kernels_precision(n: int) -> None:
    probs = [kernel_probability(float(kube_proxy_probability(n, i))) for i in range(n - 1)]
    shares = effective_shares([*probs, None])
    assert sum(shares) == 1
    assert all(abs(float(s) - 1 / n) < n * 2 / SCALE + 1e-10 for s in shares)


@given(st.lists(st.one_of(st.none(), st.integers(0, SCALE).map(lambda k: Fraction(k, SCALE))),
                max_size=20))
def test_shares_are_a_sub_distribution_and_complete_after_an_unconditional_rule(
        probs: list[Fraction | None]) -> None:
    shares = effective_shares(probs)
    assert all(s >= 0 for s in shares)
    assert sum(shares) <= 1
    if None in probs:
        assert sum(shares) == 1
        assert all(s == 0 for s in shares[probs.index(None) + 1:])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_out_of_range_probability_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        kernel_probability(bad)
