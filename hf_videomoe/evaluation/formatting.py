"""Display helpers shared by the report, its plots and the model card."""

from __future__ import annotations

import math
from fractions import Fraction


def format_eps(eps: float | None, norm: str = "linf") -> str:
    """``8/255`` for budgets that are whole multiples of 1/255 (the usual L∞ convention), else ``0.5``-style."""
    if eps is None:
        return "n/a"
    if eps == 0:
        return "0"
    scaled = eps * 255
    if norm == "linf" and abs(scaled - round(scaled)) < 1e-6 and round(scaled) > 0:
        return f"{round(scaled)}/255"
    frac = Fraction(eps).limit_denominator(1000)
    if abs(float(frac) - eps) < 1e-9 and frac.denominator > 1 and frac.denominator <= 1000 and frac.numerator < 1000:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{eps:.4g}"


def norm_symbol(norm: str) -> str:
    """``L∞`` / ``L2`` for display."""
    return {"linf": "L∞", "l2": "L2"}.get(norm, norm)


def format_percent(value: float | None, digits: int = 1) -> str:
    """An accuracy in [0, 1] as ``"12.5 %"``; ``"–"`` for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f} %"
