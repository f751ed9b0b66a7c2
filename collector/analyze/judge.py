"""One service port on one node under one rules version: declared vs observed.

The pure core of the report: counts in, shares, intervals, test and verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from natlens.collector.analyze.gof import TestResult, goodness_of_fit, min_achievable_p
from natlens.collector.analyze.intervals import wilson
from natlens.collector.analyze.rotation import RotationCheck, check_rotation

ROTATION = ("rr", "wrr")


@dataclass
class Judgement:
    total: int
    endpoints: list[dict[str, Any]]
    undeclared: list[dict[str, Any]]
    test: TestResult | None
    reasons: list[str] = field(default_factory=list)
    impossible: bool = False    # traffic where the rules give probability 0
    undeclared_traffic: int = 0  # connections to endpoints the rules do not declare
    rotation: RotationCheck | None = None   # IPVS rr/wrr: tested as a rotation
    untestable: bool = False    # a scheduler that picks by load or hash


def judge(declared: list[tuple[str, float]], observed: dict[str, int],
          scheduler: str = "random") -> Judgement:
    """``declared``: (endpoint, share) in rule order; ``observed``: endpoint → count;
    ``scheduler``: ``random`` (iptables, nftables) or the IPVS scheduler."""
    total = sum(observed.values())
    names = {e for e, _ in declared}
    eps: list[dict[str, Any]] = []
    for ep, share in declared:
        k = observed.get(ep, 0)
        lo, hi = wilson(k, total)
        eps.append({"endpoint": ep, "declared": round(share, 12), "observed": k,
                    "share": round(k / total, 6) if total else 0.0,
                    "ci95": [round(lo, 6), round(hi, 6)]})
    undeclared: list[dict[str, Any]] = [{"endpoint": ep, "observed": k}
                                        for ep, k in sorted(observed.items()) if ep not in names]
    j = Judgement(total, eps, undeclared, None)
    if any(u["observed"] for u in undeclared):
        j.undeclared_traffic = sum(u["observed"] for u in undeclared)
        j.reasons.append(f"{sum(u['observed'] for u in undeclared)} connections went to "
                         f"endpoints the rules do not declare")
    zero = [e for e in eps if e["declared"] == 0 and e["observed"] > 0]
    if zero:
        j.impossible = True
        j.reasons.append("connections went to endpoints the rules make unreachable")
    if scheduler in ROTATION:
        if total:
            j.rotation = check_rotation([e["observed"] for e in eps], [s for _, s in declared])
        return j
    if scheduler != "random":
        j.untestable = True
        j.reasons.append(f"scheduler {scheduler} picks by load or by hash, not at random: "
                         f"shares are its weights and are shown, not tested")
        return j
    live = [(e["observed"], share) for e, (_, share) in zip(eps, declared, strict=True)
            if share > 0]
    if total and len(live) >= 2:
        counts = [c for c, _ in live]
        probs = [p for _, p in live]
        j.test = goodness_of_fit(counts, probs)
    return j


def verdict(j: Judgement, p_adjusted: float | None, alpha: float) -> str:
    """``undeclared`` when connections went where the rules send none and the declared
    endpoints' shares are not skewed themselves: its own finding, not a skew."""
    v = _verdict(j, p_adjusted, alpha)
    return "undeclared" if j.undeclared_traffic and v != "skewed" else v


def _verdict(j: Judgement, p_adjusted: float | None, alpha: float) -> str:
    if j.total == 0:
        return "insufficient-data"
    if j.impossible:
        return "skewed"
    if j.rotation is not None:
        return "consistent" if j.rotation.consistent else "skewed"
    if j.untestable:
        return "insufficient-data"
    if j.test is None:
        return "consistent"  # one reachable endpoint and everything went there
    probs = [e["declared"] for e in j.endpoints if e["declared"] > 0]
    if p_adjusted is not None and p_adjusted < alpha:
        return "skewed"
    if min_achievable_p(sum(e["observed"] for e in j.endpoints), probs) >= alpha:
        return "insufficient-data"
    return "consistent"
