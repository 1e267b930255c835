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
