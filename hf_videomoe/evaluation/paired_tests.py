"""Paired significance tests for comparing two models on the same clips and seeds (docs/PROTOCOL.md).

Exact binomial tests written out with ``math.comb`` rather than taken from scipy: they are a few lines, and scipy is
not a dependency of the library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["binomial_tail", "mcnemar_exact", "sign_test"]

ALTERNATIVES = ("two-sided", "greater", "less")


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    if k <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def _p_value(successes: int, trials: int, alternative: str) -> float:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}.")
    if trials == 0:
        return 1.0
    if alternative == "greater":
        return binomial_tail(successes, trials)
    if alternative == "less":
        return binomial_tail(trials - successes, trials)
    extreme = max(successes, trials - successes)
    return min(1.0, 2 * binomial_tail(extreme, trials))


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool], alternative: str = "two-sided") -> dict:
    """Exact McNemar test of two models on the same clips: only the clips on which they disagree count.

    Returns ``{"a_only", "b_only", "p_value"}``: clips only ``a`` gets right, clips only ``b`` gets right, and the
    p-value of ``a_only`` under Binomial(a_only + b_only, 1/2) (``alternative="greater"``: ``a`` better).
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"McNemar needs the same clips for both models, got {len(a_correct)} and {len(b_correct)}.")
    a_only = sum(bool(a) and not bool(b) for a, b in zip(a_correct, b_correct))
    b_only = sum(bool(b) and not bool(a) for a, b in zip(a_correct, b_correct))
    return {"a_only": a_only, "b_only": b_only, "p_value": _p_value(a_only, a_only + b_only, alternative)}


def sign_test(differences: Sequence[float], alternative: str = "two-sided") -> dict:
    """Sign test on paired differences (e.g. per-seed ``a − b``); zero differences are dropped.

    Returns ``{"positive", "negative", "p_value"}`` (``alternative="greater"``: ``a`` better). With 5 seeds the
    smallest one-sided p-value is 1/32 ≈ 0.031 (all five in the claimed direction), the smallest two-sided 0.0625.
    """
    positive = sum(d > 0 for d in differences)
    negative = sum(d < 0 for d in differences)
    return {"positive": positive, "negative": negative, "p_value": _p_value(positive, positive + negative, alternative)}
