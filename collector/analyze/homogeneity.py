"""The same service port seen from several nodes: is the split the same on each?

A chi-square test of homogeneity over nodes × endpoints. Each node's kube-proxy makes
its own random choices, so a node whose split differs from the others' (a stale rule
set, a node-local NAT rule) shows here even when the pooled split looks right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class Homogeneity:
    statistic: float
    dof: int
    p_value: float
    verdict: str          # same, different, insufficient-data


def homogeneity(by_node: dict[str, dict[str, int]], alpha: float) -> Homogeneity | None:
    """``by_node``: node → endpoint → connections. None when there is nothing to test
    (fewer than two endpoints with traffic, or a node without any)."""
    nodes = sorted(by_node)
    eps = sorted({ep for n in nodes for ep, k in by_node[n].items() if k})
    table = np.array([[by_node[n].get(ep, 0) for ep in eps] for n in nodes])
    if len(nodes) < 2 or len(eps) < 2 or (table.sum(axis=1) == 0).any():
        return None
    res = stats.chi2_contingency(table, correction=False)
    small = float(res.expected_freq.min()) < MIN_EXPECTED
    p = float(res.pvalue)
    return Homogeneity(float(res.statistic), int(res.dof), p,
                       "insufficient-data" if small else "different" if p < alpha
                       else "same")
