"""Paired significance tests for comparing two models on the same clips and seeds (docs/PROTOCOL.md).

Exact binomial tests written out with ``math.comb``, and Student's t quantile from its closed-form distribution for
integer degrees of freedom, rather than taken from scipy: they are a few lines each, and scipy is not a dependency of
the library (tests/test_paired_tests.py checks them against scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["binomial_tail", "holm_adjust", "mcnemar_exact", "paired_mean_interval", "sign_test", "t_quantile"]

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


def _t_central_probability(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's T with ``dof`` (integer) degrees of freedom: the finite sums of Abramowitz & Stegun
    26.7.3 (odd) and 26.7.4 (even) in θ = atan(t / √dof)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 1:
        term, total = math.cos(theta), 0.0
        if dof > 1:
            total = term
            for k in range(1, (dof - 3) // 2 + 1):
                term *= cos2 * (2 * k) / (2 * k + 1)
                total += term
        return (2 / math.pi) * (theta + math.sin(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, (dof - 2) // 2 + 1):
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom (0.975 → the 95 % two-sided critical
    value), by bisection on the exact distribution function."""
    if not 0.5 <= probability < 1:
        raise ValueError(f"t_quantile takes a probability in [0.5, 1), got {probability}.")
    if not isinstance(dof, int) or dof < 1:
        raise ValueError(f"t_quantile needs a positive integer number of degrees of freedom, got {dof!r}.")
    central = 2 * probability - 1
    low, high = 0.0, 1.0
    while _t_central_probability(high, dof) < central:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if _t_central_probability(mid, dof) < central:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def paired_mean_interval(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of paired differences (e.g. per-seed ``a − b``) with its two-sided t interval over the pairs.

    Returns ``{"mean", "low", "high", "n"}``; with fewer than two pairs the interval is undefined (``low`` and
    ``high`` are ``None``). An interval that contains zero means the data cannot tell the sign of the difference."""
    if not 0 < confidence < 1:
        raise ValueError(f"paired_mean_interval takes a confidence in (0, 1), got {confidence}.")
    values = [float(d) for d in differences]
    n = len(values)
    if n == 0:
        raise ValueError("paired_mean_interval needs at least one difference.")
    mean = math.fsum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): a claim survives the family-wise 5 % level when its
    adjusted p is below 0.05."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
