"""Paired verdicts on seed-matched results: the per-seed values of a row and the protocol's rule (docs/PROTOCOL.md)
that judges a claim "a beats b" from them with the paired tests (sign test over seeds, McNemar per seed)."""

from __future__ import annotations

import math
import statistics

from ..evaluation.paired_tests import mcnemar_exact, sign_test


def values_of(rows: dict, getter) -> list[float]:
    out = []
    for row in rows.values():
        try:
            value = getter(row)
        except (KeyError, TypeError):
            value = None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out.append(float(value))
    return out


def compare(
    rows_a: dict,
    rows_b: dict,
    getter,
    *,
    higher_is: str,
    what: str,
    unit_scale: float = 100.0,
    unit: str = "%",
    digits: int = 1,
    resolution: float = 0.0,
    per_clip: str | None = None,
) -> str:
    """Claim: ``a`` > ``b`` (``higher_is="a"``) or ``a`` < ``b`` (``higher_is="b"``) on seed-matched values, judged by
    the protocol's paired tests (docs/PROTOCOL.md).

    holds: the mean difference is in the claimed direction by more than ``resolution`` and the one-sided sign test
    across seeds gives p < 0.05 (with 5 seeds: all five agree); right direction, not significant: the mean agrees
    but the sign test does not; does not hold: otherwise. ``per_clip``: a row key holding per-clip correctness (e.g.
    ``"worst_case_correct"``): an exact McNemar test per seed is added (how many seeds reach p < 0.05). When the mean
    goes against the claim, both tests are run in the opposite direction as well, and "the opposite holds" is added
    when its sign test gives p < 0.05: a claim that fails because the reverse is true is reported as such, not as a
    tie.
    """
    seeds = sorted(set(rows_a) & set(rows_b))
    pairs = []
    for s in seeds:
        try:
            a, b = getter(rows_a[s]), getter(rows_b[s])
        except (KeyError, TypeError):
            continue
        if a is None or b is None:
            continue
        pairs.append((float(a), float(b)))
    if not pairs:
        return f"{what}: **not measured**"
    sign = 1.0 if higher_is == "a" else -1.0
    diffs = [sign * (a - b) for a, b in pairs]
    mean_a = statistics.fmean(a for a, _ in pairs)
    mean_b = statistics.fmean(b for _, b in pairs)
    mean_diff = statistics.fmean(diffs)
    p_value = sign_test(diffs, "greater")["p_value"]
    if mean_diff > resolution and p_value < 0.05:
        verdict = "holds"
    elif mean_diff > resolution:
        verdict = "right direction, not significant"
    elif abs(mean_diff) <= resolution:
        verdict = "does not hold (no measurable difference)"
    else:
        verdict = "does not hold"
    n = len(pairs)
    detail = (
        f"{unit_scale * mean_a:.{digits}f}{unit} vs {unit_scale * mean_b:.{digits}f}{unit}, "
        f"{n} seed{'s' if n != 1 else ''}, one-sided sign test p = {p_value:.3g}"
    )
    against = mean_diff < -resolution
    if against:
        p_opposite = sign_test(diffs, "less")["p_value"]
        detail += f", opposite direction p = {p_opposite:.3g}"
        if p_opposite < 0.05:
            verdict += "; the opposite holds"
    if per_clip is not None:
        clip_seeds = [s for s in seeds if per_clip in rows_a[s] and per_clip in rows_b[s]]
        directions = [("McNemar per seed", higher_is == "a")]
        if against:
            directions.append(("McNemar, opposite direction", higher_is != "a"))
        for label, a_better in directions:
            tests = [
                mcnemar_exact(rows_a[s][per_clip], rows_b[s][per_clip], "greater" if a_better else "less")
                for s in clip_seeds
            ]
            if tests:
                detail += (
                    f"; {label}: p < 0.05 in {sum(t['p_value'] < 0.05 for t in tests)} of {len(tests)} "
                    "(p = " + ", ".join(f"{t['p_value']:.2g}" for t in tests) + ")"
                )
    return f"{what}: **{verdict}** ({detail})"


def seeds_phrase(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)
