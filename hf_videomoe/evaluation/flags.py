"""Reliability flags: evidence that a robustness evaluation may be over-optimistic, computed from its own numbers.

Each check looks for a symptom known from the adversarial-robustness literature (Athalye et al. 2018, "Obfuscated
Gradients Give a False Sense of Security"; Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Croce & Hein
2020, AutoAttack):

``gradient_masking``
    the gradient-free Square attack beats a white-box attack by more than ``masking_margin``.
``non_monotonic_eps``
    in the ε sweep, robust accuracy at a larger ε exceeds the accuracy at a smaller ε by more than ``tolerance``.
``non_monotonic_steps``
    the white-box attack run with twice the steps leaves more samples robust (on a subset) than with the configured
    steps, by more than ``tolerance``.
``non_deterministic_forward``
    two evaluation-mode forward passes of the same batch give logits that differ by more than ``determinism_atol``.
``zero_gradients``
    the input gradient of the cross-entropy is exactly zero or not finite for more than ``zero_gradient_fraction``
    of the samples.
``router_collapse``
    a MoE layer sends more than ``collapse_share`` of its clean routing units to one expert: the model is a dense
    model in disguise, and a routing change of 0 under router attacks then means nothing.
``routing_irrelevant``
    clean accuracy with every routing unit sent to a random expert is within noise of the accuracy with the learned
    routing (``max(routing_margin, 2 standard errors)`` of the paired difference): the routers' decisions carry no
    information, so claims about routers or experts say nothing about a mixture.
``routing_worse_than_random``
    random routing beats the learned routing by more than that noise: the routers actively hurt.
``probability_outputs``
    the model's outputs lie in [0, 1] and sum to 1 for every clip: they are probabilities, not logits, and the
    cross-entropy / DLR gradients the attacks follow are saturated.

Every check is one small function of the aggregated numbers ([`FlagInputs`]); [`CHECKS`] lists them in the order of
``report.checks`` and of the flags, and [`compute_flags`] runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .report import ReliabilityFlag

__all__ = ["CHECKS", "FlagInputs", "FlagThresholds", "compute_flags"]

BLACK_BOX_ATTACKS = frozenset({"square"})


@dataclass
class FlagThresholds:
    """Margins of the reliability checks (absolute accuracy differences are fractions in [0, 1])."""

    masking_margin: float = 0.05
    tolerance: float = 0.01
    determinism_atol: float = 1e-4
    zero_gradient_fraction: float = 0.1
    #: a MoE layer whose busiest expert takes more than this share of the clean routing units is flagged as collapsed
    collapse_share: float = 0.95
    #: smallest learned-minus-random accuracy difference that counts as routing mattering (also at least 2 SE)
    routing_margin: float = 0.02


def _round(value: float) -> float:
    return round(float(value), 6)


@dataclass(frozen=True)
class FlagInputs:
    """The aggregated numbers of one evaluation that the checks read (the arguments of [`compute_flags`])."""

    robust_accuracy: dict[str, float]
    white_box: list[str]
    black_box: list[str]
    eps_sweep: dict[str, dict[float, float]] | None
    sweep_requested: bool
    steps_check: dict[str, dict[str, Any]] | None
    steps_requested: bool
    determinism: dict[str, Any] | None
    gradients: dict[str, Any] | None
    expert_usage: list[list[float]] | None
    routing_relevance: dict[str, Any] | None
    probability_outputs: bool | None
    cascade: bool


#: What a check returns: its status (``"passed"``, ``"flagged"`` or ``"skipped: <reason>"``) and the flag it raised.
CheckResult = tuple[str, ReliabilityFlag | None]
PASSED: CheckResult = ("passed", None)


def _skipped(reason: str) -> CheckResult:
    return f"skipped: {reason}", None


def _flagged(name: str, message: str, evidence: dict[str, Any]) -> CheckResult:
    return "flagged", ReliabilityFlag(name=name, message=message, evidence=evidence)


def _check_gradient_masking(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """A black-box attack stronger than white-box ones."""
    robust_accuracy = inputs.robust_accuracy
    if inputs.cascade:
        return _skipped("cascade mode (accuracies are cumulative; use mode='full')")
    if not inputs.black_box:
        return _skipped("no black-box attack (add 'square')")
    if not inputs.white_box:
        return _skipped("no white-box attack")
    best_black = min(inputs.black_box, key=lambda a: robust_accuracy[a])
    weaker = {
        a: _round(robust_accuracy[a])
        for a in inputs.white_box
        if robust_accuracy[a] - robust_accuracy[best_black] > thresholds.masking_margin
    }
    if weaker:
        return _flagged(
            "gradient_masking",
            f"The gradient-free {best_black} attack leaves fewer samples robust "
            f"({100 * robust_accuracy[best_black]:.1f} %) than the white-box attack(s) "
            f"{', '.join(weaker)}: gradient-based attacks are weaker than a query-based one, a classic sign "
            "of gradient masking (non-differentiable preprocessing, saturated softmax, stochastic layers). "
            "Treat the white-box numbers as upper bounds; try more Square queries, APGD-DLR, or adaptive "
            "attacks (BPDA for non-differentiable parts, EOT for randomness).",
            {
                "black_box_attack": best_black,
                "black_box_accuracy": _round(robust_accuracy[best_black]),
                "white_box_accuracy": weaker,
                "margin": thresholds.masking_margin,
            },
        )
    return PASSED


def _check_eps_monotonicity(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """Robust accuracy must not rise with ε."""
    if not inputs.sweep_requested:
        return _skipped("no eps_sweep")
    rising = {}
    for attack, curve in (inputs.eps_sweep or {}).items():
        eps_sorted = sorted(curve)
        for i, small in enumerate(eps_sorted):
            for large in eps_sorted[i + 1 :]:
                if curve[large] - curve[small] > thresholds.tolerance:
                    rising.setdefault(attack, []).append(
                        {
                            "eps": _round(small),
                            "accuracy": _round(curve[small]),
                            "larger_eps": _round(large),
                            "larger_eps_accuracy": _round(curve[large]),
                        }
                    )
    if rising:
        return _flagged(
            "non_monotonic_eps",
            f"Robust accuracy rises with a larger ε for {', '.join(rising)}. A larger budget can only help "
            "the attacker, so the attack is not finding the adversarial examples it could (too few steps "
            "or restarts, a poorly scaled step size, or gradient masking). Increase steps / restarts and "
            "check the step size before trusting these numbers.",
            {"increases": rising, "tolerance": thresholds.tolerance},
        )
    return PASSED


def _check_steps_monotonicity(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """Robust accuracy must not rise with more steps."""
    if not inputs.steps_requested:
        return _skipped("check_steps=False")
    if not inputs.steps_check:
        return _skipped("no multi-step white-box attack")
    rising = {
        a: {
            "steps": info["steps"],
            "accuracy": _round(info["accuracy"]),
            "doubled_steps": info["doubled_steps"],
            "doubled_accuracy": _round(info["doubled_accuracy"]),
            "num_samples": info["num_samples"],
        }
        for a, info in inputs.steps_check.items()
        if info["doubled_accuracy"] - info["accuracy"] > thresholds.tolerance
    }
    if rising:
        return _flagged(
            "non_monotonic_steps",
            f"Running {', '.join(rising)} with twice the steps left MORE samples robust. A longer attack "
            "should never be weaker: the optimisation is unstable or the loss surface is masked. Use more "
            "steps, restarts, or a step-size schedule (APGD) until accuracy stops falling.",
            {"attacks": rising, "tolerance": thresholds.tolerance},
        )
    return PASSED


def _check_determinism(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """Evaluation-mode forward passes must be deterministic."""
    determinism = inputs.determinism
    if determinism is None:
        return _skipped("check_determinism=False")
    if determinism["max_abs_diff"] > thresholds.determinism_atol:
        return _flagged(
            "non_deterministic_forward",
            "Two evaluation-mode forward passes of the same batch gave different logits. Randomness at "
            "inference (random input transforms, dropout or router jitter left on, stochastic defenses) makes "
            "attack gradients noisy and robust accuracy optimistic and irreproducible. Disable the randomness "
            "for evaluation, or attack with Expectation over Transformation (average gradients over draws).",
            {
                "max_abs_logit_diff": _round(determinism["max_abs_diff"]),
                "prediction_changed_fraction": _round(determinism["prediction_changed_fraction"]),
                "atol": thresholds.determinism_atol,
            },
        )
    return PASSED


def _check_gradients(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """Input gradients must be neither zero nor non-finite."""
    gradients = inputs.gradients
    if gradients is None:
        return _skipped("check_gradients=False")
    if gradients["bad_fraction"] > thresholds.zero_gradient_fraction:
        return _flagged(
            "zero_gradients",
            f"The input gradient of the cross-entropy is zero or NaN for {100 * gradients['bad_fraction']:.1f} % "
            "of the samples, so gradient-based attacks cannot move them and their robust accuracy says nothing. "
            "Typical causes: non-differentiable preprocessing (rounding / quantisation, JPEG), inputs detached "
            "inside forward, saturated logits. Rely on gradient-free attacks (Square), use BPDA (a "
            "differentiable approximation of the non-differentiable part) or a margin loss such as DLR.",
            {
                "zero_or_nan_fraction": _round(gradients["bad_fraction"]),
                "num_samples": gradients["num_samples"],
                "median_gradient_norm": gradients["median_norm"],
                "threshold": thresholds.zero_gradient_fraction,
            },
        )
    return PASSED


def _check_router_collapse(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """A layer that sends (almost) every routing unit to one expert is a dense layer in disguise, so a zero routing
    change under router attacks says nothing about robust routing."""
    expert_usage = inputs.expert_usage
    if not expert_usage:
        return _skipped("no expert usage (dense model, or diagnostics=False)")
    collapsed = {
        str(layer): _round(max(shares))
        for layer, shares in enumerate(expert_usage)
        if shares and max(shares) > thresholds.collapse_share
    }
    if collapsed:
        return _flagged(
            "router_collapse",
            f"{len(collapsed)} of {len(expert_usage)} MoE layers route more than "
            f"{100 * thresholds.collapse_share:.0f} % of the clean routing units to a single expert: the "
            "model is effectively dense there, so a low routing change under router attacks reflects "
            "collapse, not robust routing, and the MoE's capacity is unused. Train with a load-balancing "
            "loss (`router_aux_loss_coef`, and `jtlat_router_balance_weight` for J-TLAT).",
            {"busiest_expert_share": collapsed, "threshold": thresholds.collapse_share},
        )
    return PASSED


def _check_routing_relevance(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """Learned routing must beat random routing by more than the noise of the paired difference."""
    relevance = inputs.routing_relevance
    if not relevance:
        return _skipped("no routing relevance (dense model, or diagnostics=False)")
    diff = relevance["learned_minus_random"]
    noise = max(thresholds.routing_margin, 2 * relevance["learned_minus_random_se"])
    evidence = {
        "learned_routing_accuracy": _round(relevance["learned"]),
        "random_routing_accuracy": _round(relevance["random"]),
        "difference": _round(diff),
        "noise": _round(noise),
        "forced_path_accuracy": [_round(v) for v in relevance["forced"]],
    }
    if diff < -noise:
        return _flagged(
            "routing_worse_than_random",
            "Sending every routing unit to a random expert gives a higher clean accuracy than the learned "
            "routing: the routers hurt the model. Router and expert results on this model say nothing "
            "about a working mixture. Train with a gate that passes the task gradient to the router "
            "(`router_gate='straight_through'`) and experts that differ (`expert_init='drop_upcycling'`).",
            evidence,
        )
    if diff <= noise:
        return _flagged(
            "routing_irrelevant",
            "Clean accuracy with random routing is within noise of the learned routing: the routing "
            "decisions do not matter, so the model is not a working mixture and router or expert attacks "
            "on it measure feature sensitivity, not routing. Train with `router_gate='straight_through'` "
            "and `expert_init='drop_upcycling'`.",
            evidence,
        )
    return PASSED


def _check_logit_outputs(inputs: FlagInputs, thresholds: FlagThresholds) -> CheckResult:
    """Logits, not probabilities: attacks on softmax outputs follow saturated gradients."""
    if inputs.probability_outputs is None:
        return _skipped("not recorded (state from an older evaluator)")
    if inputs.probability_outputs:
        return _flagged(
            "probability_outputs",
            "Every clip's model outputs lie in [0, 1] and sum to 1: the model returns probabilities, not "
            "logits. Cross-entropy and DLR attacks then differentiate through a second softmax and its "
            "saturated gradients, which hides adversarial examples (gradient masking). Evaluate the model "
            "that returns logits.",
            {"all_batches_probability_like": True},
        )
    return PASSED


#: The checks in report order: ``(name in report.checks, check)``.
CHECKS: tuple[tuple[str, Callable[[FlagInputs, FlagThresholds], CheckResult]], ...] = (
    ("gradient_masking", _check_gradient_masking),
    ("eps_monotonicity", _check_eps_monotonicity),
    ("steps_monotonicity", _check_steps_monotonicity),
    ("determinism", _check_determinism),
    ("gradients", _check_gradients),
    ("router_collapse", _check_router_collapse),
    ("routing_relevance", _check_routing_relevance),
    ("logit_outputs", _check_logit_outputs),
)


def compute_flags(
    *,
    robust_accuracy: dict[str, float],
    white_box: list[str],
    black_box: list[str],
    eps_sweep: dict[str, dict[float, float]] | None,
    sweep_requested: bool,
    steps_check: dict[str, dict[str, Any]] | None,
    steps_requested: bool,
    determinism: dict[str, Any] | None,
    gradients: dict[str, Any] | None,
    thresholds: FlagThresholds,
    expert_usage: list[list[float]] | None = None,
    routing_relevance: dict[str, Any] | None = None,
    probability_outputs: bool | None = None,
    cascade: bool = False,
) -> tuple[list[ReliabilityFlag], dict[str, str]]:
    """Run every check of [`CHECKS`] on aggregated evaluation results; returns ``(flags, checks)`` (check name →
    status). ``cascade``: the robust accuracies are cumulative (each attack ran only on the clips earlier ones left
    standing), so attacks cannot be compared with each other."""
    inputs = FlagInputs(
        robust_accuracy=robust_accuracy,
        white_box=white_box,
        black_box=black_box,
        eps_sweep=eps_sweep,
        sweep_requested=sweep_requested,
        steps_check=steps_check,
        steps_requested=steps_requested,
        determinism=determinism,
        gradients=gradients,
        expert_usage=expert_usage,
        routing_relevance=routing_relevance,
        probability_outputs=probability_outputs,
        cascade=cascade,
    )
    flags: list[ReliabilityFlag] = []
    checks: dict[str, str] = {}
    for name, check in CHECKS:
        checks[name], flag = check(inputs, thresholds)
        if flag is not None:
            flags.append(flag)
    return flags, checks
