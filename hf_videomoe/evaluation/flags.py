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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .report import ReliabilityFlag

__all__ = ["FlagThresholds", "compute_flags"]

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
    """Run every check on aggregated evaluation results; returns ``(flags, checks)`` (check name → status).
    ``cascade``: the robust accuracies are cumulative (each attack ran only on the clips earlier ones left standing),
    so attacks cannot be compared with each other."""
    flags: list[ReliabilityFlag] = []
    checks: dict[str, str] = {}

    # 1. Gradient masking: a black-box attack stronger than white-box ones.
    if cascade:
        checks["gradient_masking"] = "skipped: cascade mode (accuracies are cumulative; use mode='full')"
    elif not black_box:
        checks["gradient_masking"] = "skipped: no black-box attack (add 'square')"
    elif not white_box:
        checks["gradient_masking"] = "skipped: no white-box attack"
    else:
        best_black = min(black_box, key=lambda a: robust_accuracy[a])
        weaker = {
            a: _round(robust_accuracy[a])
            for a in white_box
            if robust_accuracy[a] - robust_accuracy[best_black] > thresholds.masking_margin
        }
        if weaker:
            flags.append(
                ReliabilityFlag(
                    name="gradient_masking",
                    message=(
                        f"The gradient-free {best_black} attack leaves fewer samples robust "
                        f"({100 * robust_accuracy[best_black]:.1f} %) than the white-box attack(s) "
                        f"{', '.join(weaker)}: gradient-based attacks are weaker than a query-based one, a classic sign "
                        "of gradient masking (non-differentiable preprocessing, saturated softmax, stochastic layers). "
                        "Treat the white-box numbers as upper bounds; try more Square queries, APGD-DLR, or adaptive "
                        "attacks (BPDA for non-differentiable parts, EOT for randomness)."
                    ),
                    evidence={
                        "black_box_attack": best_black,
                        "black_box_accuracy": _round(robust_accuracy[best_black]),
                        "white_box_accuracy": weaker,
                        "margin": thresholds.masking_margin,
                    },
                )
            )
            checks["gradient_masking"] = "flagged"
        else:
            checks["gradient_masking"] = "passed"

    # 2. Robust accuracy must not rise with ε.
    if not sweep_requested:
        checks["eps_monotonicity"] = "skipped: no eps_sweep"
    else:
        rising = {}
        for attack, curve in (eps_sweep or {}).items():
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
            flags.append(
                ReliabilityFlag(
                    name="non_monotonic_eps",
                    message=(
                        f"Robust accuracy rises with a larger ε for {', '.join(rising)}. A larger budget can only help "
                        "the attacker, so the attack is not finding the adversarial examples it could (too few steps "
                        "or restarts, a poorly scaled step size, or gradient masking). Increase steps / restarts and "
                        "check the step size before trusting these numbers."
                    ),
                    evidence={"increases": rising, "tolerance": thresholds.tolerance},
                )
            )
            checks["eps_monotonicity"] = "flagged"
        else:
            checks["eps_monotonicity"] = "passed"

    # 3. Robust accuracy must not rise with more steps.
    if not steps_requested:
        checks["steps_monotonicity"] = "skipped: check_steps=False"
    elif not steps_check:
        checks["steps_monotonicity"] = "skipped: no multi-step white-box attack"
    else:
        rising = {
            a: {
                "steps": info["steps"],
                "accuracy": _round(info["accuracy"]),
                "doubled_steps": info["doubled_steps"],
                "doubled_accuracy": _round(info["doubled_accuracy"]),
                "num_samples": info["num_samples"],
            }
            for a, info in steps_check.items()
            if info["doubled_accuracy"] - info["accuracy"] > thresholds.tolerance
        }
        if rising:
            flags.append(
                ReliabilityFlag(
                    name="non_monotonic_steps",
                    message=(
                        f"Running {', '.join(rising)} with twice the steps left MORE samples robust. A longer attack "
                        "should never be weaker: the optimisation is unstable or the loss surface is masked. Use more "
                        "steps, restarts, or a step-size schedule (APGD) until accuracy stops falling."
                    ),
                    evidence={"attacks": rising, "tolerance": thresholds.tolerance},
                )
            )
            checks["steps_monotonicity"] = "flagged"
        else:
            checks["steps_monotonicity"] = "passed"

    # 4. Deterministic forward passes.
    if determinism is None:
        checks["determinism"] = "skipped: check_determinism=False"
    elif determinism["max_abs_diff"] > thresholds.determinism_atol:
        flags.append(
            ReliabilityFlag(
                name="non_deterministic_forward",
                message=(
                    "Two evaluation-mode forward passes of the same batch gave different logits. Randomness at "
                    "inference (random input transforms, dropout or router jitter left on, stochastic defenses) makes "
                    "attack gradients noisy and robust accuracy optimistic and irreproducible. Disable the randomness "
                    "for evaluation, or attack with Expectation over Transformation (average gradients over draws)."
                ),
                evidence={
                    "max_abs_logit_diff": _round(determinism["max_abs_diff"]),
                    "prediction_changed_fraction": _round(determinism["prediction_changed_fraction"]),
                    "atol": thresholds.determinism_atol,
                },
            )
        )
        checks["determinism"] = "flagged"
    else:
        checks["determinism"] = "passed"

    # 5. Zero / non-finite input gradients.
    if gradients is None:
        checks["gradients"] = "skipped: check_gradients=False"
    elif gradients["bad_fraction"] > thresholds.zero_gradient_fraction:
        flags.append(
            ReliabilityFlag(
                name="zero_gradients",
                message=(
                    f"The input gradient of the cross-entropy is zero or NaN for {100 * gradients['bad_fraction']:.1f} % "
                    "of the samples, so gradient-based attacks cannot move them and their robust accuracy says nothing. "
                    "Typical causes: non-differentiable preprocessing (rounding / quantisation, JPEG), inputs detached "
                    "inside forward, saturated logits. Rely on gradient-free attacks (Square), use BPDA (a "
                    "differentiable approximation of the non-differentiable part) or a margin loss such as DLR."
                ),
                evidence={
                    "zero_or_nan_fraction": _round(gradients["bad_fraction"]),
                    "num_samples": gradients["num_samples"],
                    "median_gradient_norm": gradients["median_norm"],
                    "threshold": thresholds.zero_gradient_fraction,
                },
            )
        )
        checks["gradients"] = "flagged"
    else:
        checks["gradients"] = "passed"

    # 6. Router collapse: a layer that sends (almost) every routing unit to one expert is a dense layer in disguise, so
    #    a zero routing change under router attacks says nothing about robust routing.
    if not expert_usage:
        checks["router_collapse"] = "skipped: no expert usage (dense model, or diagnostics=False)"
    else:
        collapsed = {
            str(layer): _round(max(shares))
            for layer, shares in enumerate(expert_usage)
            if shares and max(shares) > thresholds.collapse_share
        }
        if collapsed:
            flags.append(
                ReliabilityFlag(
                    name="router_collapse",
                    message=(
                        f"{len(collapsed)} of {len(expert_usage)} MoE layers route more than "
                        f"{100 * thresholds.collapse_share:.0f} % of the clean routing units to a single expert: the "
                        "model is effectively dense there, so a low routing change under router attacks reflects "
                        "collapse, not robust routing, and the MoE's capacity is unused. Train with a load-balancing "
                        "loss (`router_aux_loss_coef`, and `jtlat_router_balance_weight` for J-TLAT)."
                    ),
                    evidence={"busiest_expert_share": collapsed, "threshold": thresholds.collapse_share},
                )
            )
            checks["router_collapse"] = "flagged"
        else:
            checks["router_collapse"] = "passed"

    # 7. Routing relevance: learned routing must beat random routing by more than the noise of the paired difference.
    if not routing_relevance:
        checks["routing_relevance"] = "skipped: no routing relevance (dense model, or diagnostics=False)"
    else:
        diff = routing_relevance["learned_minus_random"]
        noise = max(thresholds.routing_margin, 2 * routing_relevance["learned_minus_random_se"])
        evidence = {
            "learned_routing_accuracy": _round(routing_relevance["learned"]),
            "random_routing_accuracy": _round(routing_relevance["random"]),
            "difference": _round(diff),
            "noise": _round(noise),
            "forced_path_accuracy": [_round(v) for v in routing_relevance["forced"]],
        }
        if diff < -noise:
            flags.append(
                ReliabilityFlag(
                    name="routing_worse_than_random",
                    message=(
                        "Sending every routing unit to a random expert gives a higher clean accuracy than the learned "
                        "routing: the routers hurt the model. Router and expert results on this model say nothing "
                        "about a working mixture. Train with a gate that passes the task gradient to the router "
                        "(`router_gate='straight_through'`) and experts that differ (`expert_init='drop_upcycling'`)."
                    ),
                    evidence=evidence,
                )
            )
            checks["routing_relevance"] = "flagged"
        elif diff <= noise:
            flags.append(
                ReliabilityFlag(
                    name="routing_irrelevant",
                    message=(
                        "Clean accuracy with random routing is within noise of the learned routing: the routing "
                        "decisions do not matter, so the model is not a working mixture and router or expert attacks "
                        "on it measure feature sensitivity, not routing. Train with `router_gate='straight_through'` "
                        "and `expert_init='drop_upcycling'`."
                    ),
                    evidence=evidence,
                )
            )
            checks["routing_relevance"] = "flagged"
        else:
            checks["routing_relevance"] = "passed"

    # 8. Logits, not probabilities: attacks on softmax outputs follow saturated gradients.
    if probability_outputs is None:
        checks["logit_outputs"] = "skipped: not recorded (state from an older evaluator)"
    elif probability_outputs:
        flags.append(
            ReliabilityFlag(
                name="probability_outputs",
                message=(
                    "Every clip's model outputs lie in [0, 1] and sum to 1: the model returns probabilities, not "
                    "logits. Cross-entropy and DLR attacks then differentiate through a second softmax and its "
                    "saturated gradients, which hides adversarial examples (gradient masking). Evaluate the model "
                    "that returns logits."
                ),
                evidence={"all_batches_probability_like": True},
            )
        )
        checks["logit_outputs"] = "flagged"
    else:
        checks["logit_outputs"] = "passed"
    return flags, checks
