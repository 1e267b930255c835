"""`RobustnessArguments` and the ways `evaluate_robustness` takes its options (a dataclass, keywords, both)."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import hf_videomoe  # noqa: E402
from hf_videomoe.evaluation import FlagThresholds, RobustnessArguments, evaluate_robustness  # noqa: E402
from hf_videomoe.evaluation.flags import CHECKS, compute_flags  # noqa: E402

FAST = dict(
    eps=2 / 255,
    steps=2,
    batch_size=4,
    diagnostics=False,
    compute_cost=False,
    check_determinism=False,
    check_gradients=False,
    progress=False,
)


@pytest.fixture(scope="module")
def model(tiny_moe_model):
    return tiny_moe_model().eval()


@pytest.fixture(scope="module")
def data(model, model_labelled_clips):
    return model_labelled_clips(model, 4)


def test_exported_from_the_package():
    assert hf_videomoe.RobustnessArguments is RobustnessArguments
    assert "RobustnessArguments" in hf_videomoe.__all__
    every_field = {f.name for f in dataclasses.fields(RobustnessArguments)}
    assert all(f.metadata.get("help") for f in dataclasses.fields(RobustnessArguments)), every_field


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "l1"}, r"norm must be 'linf' or 'l2', got 'l1'"),
        ({"mode": "fast"}, r"mode must be 'full' or 'cascade', got 'fast'"),
        ({"mode": "cascade", "eps_sweep": [1 / 255]}, r"use mode='full' for eps_sweep"),
        ({"exact_attacks": ["pgd"]}, r"exact_attacks only applies to mode='cascade'"),
        ({"eps": 8}, r"eps=8 exceeds 1"),
        ({"eps": "big"}, r"eps must be a number, got 'big'"),
        ({"eps_sweep": []}, r"eps_sweep is empty"),
        ({"eps_sweep": [0.0]}, r"eps_sweep value must be a positive budget"),
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.0}, r"batch_size must be a positive integer, got 2\.0"),
        ({"check_steps_samples": 0}, r"check_steps_samples must be >= 1, got 0"),
    ],
)
def test_validation_on_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustnessArguments(**kwargs)


def test_normalised_on_construction_and_replace():
    args = RobustnessArguments(eps=2, norm="l2", eps_sweep=[4 / 255, 1 / 255, 4 / 255], thresholds={"tolerance": 0.1})
    assert args.eps == 2.0 and isinstance(args.eps, float)
    assert args.eps_sweep == [1 / 255, 4 / 255]
    assert args.thresholds == FlagThresholds(tolerance=0.1)
    assert RobustnessArguments().thresholds == FlagThresholds()
    assert dataclasses.replace(args) == args  # normalising again changes nothing
    with pytest.raises(ValueError, match="exceeds 1"):
        dataclasses.replace(args, norm="linf")  # an ε fine for L2 is not for L∞
    with pytest.raises(TypeError):
        RobustnessArguments(thresholds={"margin": 0.1})


def test_unknown_keyword_names_the_fields():
    with pytest.raises(TypeError, match=r"\['epsilon'\].*RobustnessArguments: attacks, eps, norm,"):
        evaluate_robustness(None, None, epsilon=0.1)  # refused before the model or the data is touched
    with pytest.raises(TypeError, match="multiple values for argument 'attacks'"):
        evaluate_robustness(None, None, ["pgd"], attacks=["fgsm"])


def test_arguments_keywords_and_overrides_agree(model, data):
    by_keywords = evaluate_robustness(model, data, attacks=["fgsm", "pgd"], **FAST)
    positional_attacks = evaluate_robustness(model, data, ["fgsm", "pgd"], **FAST)  # the pre-dataclass call
    args = RobustnessArguments(attacks=["fgsm", "pgd"], **FAST)
    by_args = evaluate_robustness(model, data, args)
    assert by_args == by_keywords == positional_attacks
    base = dataclasses.replace(args, eps=8 / 255)
    overridden = evaluate_robustness(model, data, args=base, eps=2 / 255)
    assert overridden == by_keywords and base.eps == 8 / 255  # kwargs override, the arguments are not mutated


def test_checks_table_order():
    flags, checks = compute_flags(
        robust_accuracy={},
        white_box=[],
        black_box=[],
        eps_sweep=None,
        sweep_requested=False,
        steps_check=None,
        steps_requested=False,
        determinism=None,
        gradients=None,
        thresholds=FlagThresholds(),
    )
    order = ["gradient_masking", "eps_monotonicity", "steps_monotonicity", "determinism", "gradients"]
    order += ["router_collapse", "routing_relevance", "logit_outputs"]
    assert flags == [] and list(checks) == [name for name, _ in CHECKS] == order  # the order reports have always had
    assert all(status.startswith("skipped: ") for status in checks.values())
