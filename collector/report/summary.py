"""The report's first lines: how many service ports were judged and how each came out,
then the entries worst first; ``--only`` and ``--fail-on`` pick verdicts."""

from __future__ import annotations

from collections import Counter
from typing import Any

# worst first: a skew, traffic no rule declares, too little to tell, then what is fine
ORDER = ("skewed", "undeclared", "insufficient-data", "consistent")


def summary(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Service port judgements by verdict, every verdict present (0 when none)."""
    n = Counter(e["verdict"] for e in entries)
    return {"judged": len(entries), **{v: n.get(v, 0) for v in ORDER},
            **{v: k for v, k in n.items() if v not in ORDER}}


def worst_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By verdict (``ORDER``), then the smallest adjusted p-value, the largest distance."""
    def key(e: dict[str, Any]) -> tuple[int, float, float]:
        v = ORDER.index(e["verdict"]) if e["verdict"] in ORDER else len(ORDER)
        p = (e.get("test") or {}).get("p_value_holm")
        return v, 1.0 if p is None else p, -(e.get("tvd") or 0.0)
    return sorted(entries, key=key)


def only(entries: list[dict[str, Any]], verdicts: tuple[str, ...]) -> list[dict[str, Any]]:
    return [e for e in entries if not verdicts or e["verdict"] in verdicts]


def failing(entries: list[dict[str, Any]], verdicts: tuple[str, ...]) -> list[dict[str, Any]]:
    """The entries whose verdict ``--fail-on`` names."""
    return [e for e in entries if e["verdict"] in verdicts]
