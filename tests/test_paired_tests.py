import pytest

from hf_videomoe.evaluation.paired_tests import binomial_tail, mcnemar_exact, sign_test


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
    line = compare(rows_a, rows_b, lambda r: r["acc"], higher_is="a", what="claim", per_clip="clips")
    assert "**does not hold; the opposite holds**" in line
    assert "opposite direction p = 0.0312" in line
    assert "McNemar per seed: p < 0.05 in 0 of 5" in line and "McNemar, opposite direction: p < 0.05 in 5 of 5" in line
    # The claim's own direction is unchanged, and a claim that holds gets no opposite report.
    line = compare(rows_b, rows_a, lambda r: r["acc"], higher_is="a", what="claim", per_clip="clips")
    assert "**holds**" in line and "opposite" not in line
    # Four seeds against and one for: the opposite is not significant (p = 6/32), so only "does not hold".
    rows_b[0] = {"acc": 0.3, "clips": worse}
    line = compare(rows_a, rows_b, lambda r: r["acc"], higher_is="a", what="claim")
    assert "**does not hold**" in line and "opposite direction p = 0.188" in line
    # A claim that a is lower (higher_is="b"), when a is higher on every seed and clip: both tests turn the other way.
    rows_b[0] = {"acc": 0.6, "clips": better}
    line = compare(rows_b, rows_a, lambda r: r["acc"], higher_is="b", what="claim", per_clip="clips")
    assert "**does not hold; the opposite holds**" in line
    assert "McNemar per seed: p < 0.05 in 0 of 5" in line and "McNemar, opposite direction: p < 0.05 in 5 of 5" in line


def test_flags_are_named_with_their_seeds():
    from hf_videomoe.reproduction.tables import seeds_phrase

    assert seeds_phrase([1]) == "seed 1" and seeds_phrase([0, 2]) == "seeds 0, 2"
