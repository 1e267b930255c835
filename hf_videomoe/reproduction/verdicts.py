"""Paired verdicts on seed-matched results: the per-seed values of a row and the protocol's rule (docs/PROTOCOL.md)
that judges a claim "a beats b" from them with the paired tests (sign test over seeds, McNemar per seed), the paired
mean difference with its 95 % interval over seeds, and Holm's correction within a family of claims."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..evaluation.paired_tests import holm_adjust, mcnemar_exact, paired_mean_interval, sign_test

#: The family-wise level of Holm's correction and the level of each test.
ALPHA = 0.05


def on_seeds(rows: dict, seeds) -> dict:
    """``rows`` (``{seed: result}``) restricted to ``seeds``: a reference row paired with rows that ran on fewer seeds."""
    return {seed: row for seed, row in rows.items() if seed in seeds}


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


@dataclass
class Verdict:
    """One claim judged on seed-matched values; ``str()`` gives its line. ``p_value`` is what Holm's correction
    adjusts (`holm`; ``holm_p`` is filled in by it): the claim's one-sided sign-test p, or, when the opposite holds, the
    two-sided p of that finding, whose direction was chosen after the data were seen."""

    what: str
    verdict: str
    detail: str
    p_value: float
    asserts: bool = False  # "holds" or "the opposite holds": the verdicts a family-wise correction can withdraw
    opposite: bool = False  # the verdict asserts the opposite of the claim
    holm_p: float | None = field(default=None, repr=False)
    family_size: int | None = field(default=None, repr=False)

    def __str__(self) -> str:
        detail = self.detail
        if self.holm_p is not None and self.asserts:
            survives = "survives" if self.holm_p < ALPHA else "does not survive"
            family = "a family of one claim" if self.family_size == 1 else f"Holm over {self.family_size} claims"
            detail += f"; {family}: p = {self.holm_p:.3g}, {survives}"
        return f"{self.what}: **{self.verdict}** ({detail})"


def holm(verdicts: list, family_size: int | None = None) -> list:
    """Apply Holm's correction to the sign-test p-values of the `Verdict`s in ``verdicts`` (one family of claims;
    other entries, such as hand-written lines, pass through). Returns ``verdicts``.

    ``family_size``: the number of claims registered for the family, when some have no data yet. The missing ones
    enter with p = 1 (they rank last), so a verdict read before its family is complete is corrected as strictly as
    the whole family will be, never more leniently."""
    family = [v for v in verdicts if isinstance(v, Verdict)]
    size = len(family) if family_size is None else family_size
    if size < len(family):
        raise ValueError(f"family_size={family_size} is smaller than the {len(family)} claims tested in the family")
    p_values = [v.p_value for v in family] + [1.0] * (size - len(family))
    for verdict, adjusted in zip(family, holm_adjust(p_values)):
        verdict.holm_p, verdict.family_size = adjusted, size
    return verdicts


def survivors(verdicts: list) -> list[Verdict]:
    """The asserted verdicts (holds / the opposite holds) of a family that survive Holm's correction."""
    return [v for v in verdicts if isinstance(v, Verdict) and v.asserts and v.holm_p is not None and v.holm_p < ALPHA]


def finding(verdict: Verdict) -> str:
    """What a verdict that asserts something found: the claim, or its opposite."""
    return f"the opposite of “{verdict.what}”" if verdict.opposite else f"“{verdict.what}”"


def interval_phrase(interval: dict, unit_scale: float, unit: str, digits: int) -> str:
    points = " points" if unit == "%" else ""
    text = f"paired difference {unit_scale * interval['mean']:+.{digits}f}{points}"
    if interval["low"] is not None:
        text += f", 95 % CI [{unit_scale * interval['low']:+.{digits}f}, {unit_scale * interval['high']:+.{digits}f}]"
    return text


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
    per_clip: str | None = None,
) -> Verdict | str:
    """Claim: ``a`` > ``b`` (``higher_is="a"``) or ``a`` < ``b`` (``higher_is="b"``) on seed-matched values, judged by
    the protocol's paired tests (docs/PROTOCOL.md).

    - **holds**: the mean difference is in the claimed direction and the one-sided sign test across seeds gives
      p < 0.05 (with 5 seeds: all five agree) — the protocol's rule; when the paired interval still contains zero
      (one seed far off), the line says so;
    - **the opposite holds**: the same, in the other direction;
    - otherwise the paired mean difference's 95 % t interval over seeds decides the words: **inconclusive** when it
      contains zero (the data cannot tell the sign: never "a tie" or "no effect"), **right direction, not
      significant** or **does not hold (opposite direction)** when it excludes zero but the sign test is not
      significant, and **no measurable difference** only when every seed gives the same value.

    The difference is always given in the claimed direction with its interval. ``per_clip``: a row key holding
    per-clip correctness (e.g. ``"worst_case_correct"``): an exact McNemar test per seed is added (how many seeds reach
    p < 0.05), in both directions when the mean goes against the claim.
    """
    seeds = sorted(set(rows_a) & set(rows_b))
    pairs = []
    for s in seeds:
        try:
            a, b = getter(rows_a[s]), getter(rows_b[s])
        except (KeyError, TypeError):
            continue
        if a is None or b is None or math.isnan(float(a)) or math.isnan(float(b)):
            continue
        pairs.append((float(a), float(b)))
    if not pairs:
        return f"{what}: **not measured**"
    sign = 1.0 if higher_is == "a" else -1.0
    diffs = [sign * (a - b) for a, b in pairs]
    mean_a = statistics.fmean(a for a, _ in pairs)
    mean_b = statistics.fmean(b for _, b in pairs)
    mean_diff = statistics.fmean(diffs)
    interval = paired_mean_interval(diffs)
    p_value = sign_test(diffs, "greater")["p_value"]
    p_opposite = sign_test(diffs, "less")["p_value"]
    spans_zero = interval["low"] is None or interval["low"] <= 0 <= interval["high"]
    asserted_p, asserts, opposite = p_value, False, False
    if mean_diff > 0 and p_value < ALPHA:
        verdict, asserts = "holds", True
    elif mean_diff < 0 and p_opposite < ALPHA:
        # Found in the direction the data showed, not the one claimed: Holm gets its two-sided p.
        verdict, asserts, opposite = "does not hold; the opposite holds", True, True
        asserted_p = min(1.0, 2 * p_opposite)
    elif all(d == 0 for d in diffs):
        verdict = "no measurable difference (the same on every seed)"
    elif spans_zero:
        verdict = "inconclusive"
    elif interval["low"] > 0:
        verdict = "right direction, not significant by the sign test"
    else:
        verdict = "does not hold (opposite direction, not significant by the sign test)"
    n = len(pairs)
    detail = (
        f"{unit_scale * mean_a:.{digits}f}{unit} vs {unit_scale * mean_b:.{digits}f}{unit}, "
        f"{interval_phrase(interval, unit_scale, unit, digits)}, {n} seed{'s' if n != 1 else ''}, "
        f"one-sided sign test p = {p_value:.3g}"
    )
    against = mean_diff < 0
    if against:
        detail += f", opposite direction p = {p_opposite:.3g}"
    if asserts and spans_zero:
        detail += ", though the 95 % interval contains zero"
    if per_clip is not None:
        detail += mcnemar_phrase(rows_a, rows_b, seeds, per_clip, higher_is == "a", against)
    return Verdict(what, verdict, detail, p_value=asserted_p, asserts=asserts, opposite=opposite)


def mcnemar_phrase(rows_a: dict, rows_b: dict, seeds: list, per_clip: str, a_better: bool, against: bool) -> str:
    clip_seeds = [s for s in seeds if per_clip in rows_a[s] and per_clip in rows_b[s]]
    directions = [("McNemar per seed", a_better)]
    if against:
        directions.append(("McNemar, opposite direction", not a_better))
    text = ""
    for label, a_is_better in directions:
        tests = [
            mcnemar_exact(rows_a[s][per_clip], rows_b[s][per_clip], "greater" if a_is_better else "less")
            for s in clip_seeds
        ]
        if tests:
            text += (
                f"; {label}: p < 0.05 in {sum(t['p_value'] < ALPHA for t in tests)} of {len(tests)} "
                "(p = " + ", ".join(f"{t['p_value']:.2g}" for t in tests) + ")"
            )
    return text


def seeds_phrase(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)
