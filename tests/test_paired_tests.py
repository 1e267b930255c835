import pytest

from hf_videomoe.evaluation.paired_tests import (
    binomial_tail,
    holm_adjust,
    mcnemar_exact,
    paired_mean_interval,
    sign_test,
    t_quantile,
)


def test_binomial_tail():
    assert binomial_tail(0, 5) == 1.0
    assert binomial_tail(5, 5) == pytest.approx(1 / 32)
    assert binomial_tail(4, 5) == pytest.approx(6 / 32)


def test_sign_test():
    assert sign_test([1, 2, 3, 4, 5], "greater")["p_value"] == pytest.approx(1 / 32)
    assert sign_test([1, 2, 3, 4, 5])["p_value"] == pytest.approx(2 / 32)
    assert sign_test([1, 2, 3, 4, -5], "greater")["p_value"] == pytest.approx(6 / 32)
    assert sign_test([-1, -2, -3], "greater")["p_value"] == 1.0
    assert sign_test([-1, -2, -3], "less")["p_value"] == pytest.approx(1 / 8)
    result = sign_test([0.0, 0.0, 1.0], "greater")  # ties dropped
    assert (result["positive"], result["negative"], result["p_value"]) == (1, 0, 0.5)
    assert sign_test([0.0, 0.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="alternative"):
        sign_test([1.0], "bigger")


def test_mcnemar_exact():
    a = [True] * 10 + [False] * 2 + [True] * 50
    b = [False] * 10 + [True] * 2 + [True] * 50
    result = mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"]) == (10, 2)
    expected = 2 * sum(__import__("math").comb(12, i) for i in range(10, 13)) / 2**12
    assert result["p_value"] == pytest.approx(expected)
    assert mcnemar_exact(a, b, "greater")["p_value"] == pytest.approx(expected / 2)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same clips"):
        mcnemar_exact(a, b[:-1])


def test_compare_reports_a_claim_whose_opposite_holds():
    from hf_videomoe.reproduction.tables import compare

    worse = [True] * 40 + [False] * 60
    better = [True] * 60 + [False] * 40
    # Claim "a > b", but b is better on every seed and on every clip where they differ.
    rows_a = {s: {"acc": 0.4, "clips": worse} for s in range(5)}
    rows_b = {s: {"acc": 0.6 + 0.01 * s, "clips": better} for s in range(5)}
    line = str(compare(rows_a, rows_b, lambda r: r["acc"], higher_is="a", what="claim", per_clip="clips"))
    assert "**does not hold; the opposite holds**" in line
    assert "opposite direction p = 0.0312" in line
    assert "McNemar per seed: p < 0.05 in 0 of 5" in line and "McNemar, opposite direction: p < 0.05 in 5 of 5" in line
    # The claim's own direction is unchanged, and a claim that holds gets no opposite report.
    line = str(compare(rows_b, rows_a, lambda r: r["acc"], higher_is="a", what="claim", per_clip="clips"))
    assert "**holds**" in line and "opposite" not in line
    # Four seeds against and one for: the opposite is not significant (p = 6/32) and the paired interval
    # (mean −16.0 points) spans zero, so the claim is inconclusive, with its interval, not "a tie".
    rows_b[0] = {"acc": 0.3, "clips": worse}
    line = str(compare(rows_a, rows_b, lambda r: r["acc"], higher_is="a", what="claim"))
    assert "**inconclusive**" in line and "opposite direction p = 0.188" in line
    # sd of the differences 0.1458, t(0.975, 4) = 2.776: half-width 18.1 points.
    assert "paired difference -16.0 points, 95 % CI [-34.1, +2.1]" in line
    # A claim that a is lower (higher_is="b"), when a is higher on every seed and clip: both tests turn the other way.
    rows_b[0] = {"acc": 0.6, "clips": better}
    line = str(compare(rows_b, rows_a, lambda r: r["acc"], higher_is="b", what="claim", per_clip="clips"))
    assert "**does not hold; the opposite holds**" in line
    assert "McNemar per seed: p < 0.05 in 0 of 5" in line and "McNemar, opposite direction: p < 0.05 in 5 of 5" in line


def test_flags_are_named_with_their_seeds():
    from hf_videomoe.reproduction.tables import seeds_phrase

    assert seeds_phrase([1]) == "seed 1" and seeds_phrase([0, 2]) == "seeds 0, 2"


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 4, 5, 9, 10, 29, 60):
        for probability in (0.9, 0.975, 0.995):
            assert t_quantile(probability, dof) == pytest.approx(stats.t.ppf(probability, dof), rel=1e-9)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="probability in"):
        t_quantile(0.3, 4)
    with pytest.raises(ValueError, match="positive integer"):
        t_quantile(0.975, 0)


def test_paired_mean_interval():
    # Hand-derived: mean 1, sd 1 over n = 4, t(0.975, 3) = 3.182446…, half-width 3.182446 / 2.
    result = paired_mean_interval([0.0, 1.0, 2.0, 1.0 + 0.0])
    sd = (2 / 3) ** 0.5
    half = 3.182446305284263 * sd / 2
    assert result["mean"] == pytest.approx(1.0)
    assert (result["low"], result["high"]) == (pytest.approx(1 - half), pytest.approx(1 + half))
    assert paired_mean_interval([2.0])["low"] is None
    with pytest.raises(ValueError, match="at least one"):
        paired_mean_interval([])


def test_holm_adjust():
    # Hand-worked: sorted 0.01, 0.02, 0.04 with m = 3 -> 0.03, 0.04 (2 * 0.02), 0.04 (max(0.04, 1 * 0.04)).
    assert holm_adjust([0.04, 0.01, 0.02]) == [pytest.approx(0.04), pytest.approx(0.03), pytest.approx(0.04)]
    # Monotone: a larger p never gets a smaller adjusted p; capped at 1.
    assert holm_adjust([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]
    # Five seeds, all agreeing: p = 1/32 survives alone but not in a family of two.
    assert holm_adjust([1 / 32])[0] < 0.05 and min(holm_adjust([1 / 32, 1 / 32])) > 0.05


def test_verdict_wording_follows_the_interval_and_holm():
    from hf_videomoe.reproduction.verdicts import compare, holm, survivors

    def rows(values):
        return {s: {"acc": v} for s, v in enumerate(values)}

    base = rows([0.30, 0.32, 0.34, 0.36, 0.38])
    clearly_better = rows([0.40, 0.43, 0.44, 0.47, 0.48])
    mostly_better = rows([0.40, 0.42, 0.44, 0.46, 0.37])  # 4 of 5: sign test p = 6/32, interval above zero
    noisy = rows([0.40, 0.22, 0.44, 0.26, 0.38])
    verdicts = [
        compare(clearly_better, base, lambda r: r["acc"], higher_is="a", what="clear"),
        compare(mostly_better, base, lambda r: r["acc"], higher_is="a", what="mostly"),
        compare(noisy, base, lambda r: r["acc"], higher_is="a", what="noisy"),
        compare(base, base, lambda r: r["acc"], higher_is="a", what="same"),
    ]
    assert [v.verdict for v in verdicts] == [
        "holds",
        "right direction, not significant by the sign test",
        "inconclusive",
        "no measurable difference (the same on every seed)",
    ]
    assert "95 % CI [" in str(verdicts[2])
    holm(verdicts)
    # A family of four claims: the one that holds at p = 1/32 does not survive Holm (4 / 32 > 0.05).
    assert survivors(verdicts) == [] and "Holm over 4 claims: p = 0.125, does not survive" in str(verdicts[0])
    alone = holm([compare(clearly_better, base, lambda r: r["acc"], higher_is="a", what="clear")])
    assert [v.what for v in survivors(alone)] == ["clear"] and "survives" in str(alone[0])


def test_an_opposite_finding_enters_holm_two_sided_and_is_named_as_the_opposite():
    from hf_videomoe.reproduction.verdicts import compare, finding, holm, survivors

    rows_a = {s: {"acc": 0.30 + 0.01 * s} for s in range(5)}
    rows_b = {s: {"acc": 0.40 + 0.01 * s} for s in range(5)}
    verdict = compare(rows_a, rows_b, lambda r: r["acc"], higher_is="a", what="a beats b")
    assert verdict.verdict == "does not hold; the opposite holds"
    # Its direction was read from the data: two-sided, 2 / 32, so even a family of one does not survive at 5 seeds.
    assert verdict.p_value == pytest.approx(2 / 32)
    assert survivors(holm([verdict])) == [] and finding(verdict) == "the opposite of “a beats b”"
    # A missing (NaN) value drops the seed instead of counting as a difference.
    rows_a[4] = {"acc": float("nan")}
    assert "4 seeds" in str(compare(rows_a, rows_b, lambda r: r["acc"], higher_is="a", what="a beats b"))
    # "holds" by the sign test while one seed is far off: the interval's doubt is printed with it.
    base = {s: {"acc": 0.3} for s in range(5)}
    skewed = {s: {"acc": 0.3 + (0.4 if s == 4 else 0.001)} for s in range(5)}
    line = str(compare(skewed, base, lambda r: r["acc"], higher_is="a", what="skewed"))
    assert "**holds**" in line and "though the 95 % interval contains zero" in line
    with pytest.raises(ValueError, match="confidence in"):
        paired_mean_interval([1.0, 2.0], confidence=1.0)


def test_a_registered_family_is_corrected_for_all_its_claims_before_all_have_data():
    """Holm over a registered family counts the claims not yet tested (as p = 1): reading the first rows early never
    corrects more leniently than the complete family will (issue 40's four model-step claims)."""
    from hf_videomoe.reproduction.claims import MODEL_STEP_FAMILY_SIZE, what_holds
    from hf_videomoe.reproduction.recipes import Settings
    from hf_videomoe.reproduction.verdicts import compare, holm

    base = {s: {"acc": 0.30 + 0.01 * s} for s in range(5)}
    better = {s: {"acc": 0.40 + 0.01 * s} for s in range(5)}  # all five seeds: one-sided p = 1/32
    verdict = compare(better, base, lambda r: r["acc"], higher_is="a", what="better")
    assert holm([verdict], family_size=4)[0].holm_p == pytest.approx(4 / 32)
    assert "Holm over 4 claims: p = 0.125, does not survive" in str(verdict)
    with pytest.raises(ValueError, match="family_size"):
        holm([verdict, verdict], family_size=1)

    def rows(worst):
        return {
            s: {"worst_case": w, "worst_case_correct": [i < 100 * w for i in range(100)]} for s, w in enumerate(worst)
        }

    results = {
        "attacks": {},
        "defenses": {"j-tlat": rows([0.30, 0.31, 0.32, 0.33, 0.34])},
        "ablations": {"model-attack-pgd": rows([0.40, 0.41, 0.42, 0.43, 0.44])},
    }
    text = "\n".join(what_holds(results, Settings.quick(), ablation_seeds=list(range(5))))
    assert MODEL_STEP_FAMILY_SIZE == 4
    assert "step 3 on PGD examples has a higher worst case than J-TLAT: **holds**" in text
    assert f"Holm over {MODEL_STEP_FAMILY_SIZE} claims: p = 0.125, does not survive" in text
    assert "4 paired claims (3 not tested yet, counted with p = 1)" in text
    assert "step 3 on TLA-M examples (`model-attack-tla-m`): not run yet" in text
    assert "higher worst case than MoE AT: **not measured** (no MoE AT rows on the ablation seeds)" in text
