"""The values [`AdversarialTrainingArguments`] accept, and the checks its ``__post_init__`` runs on them.

Kept apart from the dataclass so that the field declarations read as the recipe they are. The method names are
the vocabulary of the ``adv_method`` field only: which class trains each is the trainer's business
(`hf_videomoe.training.methods.METHODS`, checked to list the same names).
"""

from __future__ import annotations

import math
from typing import Any

from ..attacks import TEMPORAL_STEPS, resolve_attack_name

__all__ = [
    "ADV_METHODS",
    "JTLAT_ROUTER_BALANCES",
    "JTLAT_STEPS",
    "JTLAT_UPDATES",
    "MOE_ONLY_METHODS",
    "NORMS",
    "ROBUST_METRIC_PREFIX",
    "WORST_CASE_METRIC",
    "validate_adversarial_arguments",
]

# Training methods, in the order of the paper's comparison table.
ADV_METHODS = ("none", "pgd-at", "trades", "advmoe", "tlat", "j-tlat")
# Methods that split the model into router / expert parameter groups and therefore need an MoE model.
MOE_ONLY_METHODS = ("advmoe", "j-tlat")
# The three J-TLAT steps, in the order they run inside a training step.
JTLAT_STEPS = ("router", "expert", "model")
JTLAT_ROUTER_BALANCES = ("switch", "sharp")
JTLAT_UPDATES = ("summed", "sequential")
_JTLAT_STEP_ALIASES = {"1": "router", "2": "expert", "3": "model", "experts": "expert", "routers": "router"}
NORMS = ("linf", "l2")
# Robust-evaluation metric names (without the `eval_` prefix) that `metric_for_best_model` may select.
ROBUST_METRIC_PREFIX = "robust_accuracy_"
WORST_CASE_METRIC = "worst_case_accuracy"

_NON_NEGATIVE_WEIGHTS = (
    "lipschitz_weight",
    "expert_lipschitz_weight",
    "router_lipschitz_weight",
    "guidance_weight",
    "router_weight",
    "trades_beta",
    "jtlat_router_balance_weight",
)


def validate_adversarial_arguments(args: Any) -> None:
    """Check the adversarial-training fields of ``args`` (an `AdversarialTrainingArguments`) and normalise them in
    place: ``adv_method`` lower-cased, ``jtlat_steps`` and attack names resolved, ``eval_attacks`` split when given as
    one string. Raises `ValueError` naming the first bad field."""
    if args.adv_method is not None:
        method = str(args.adv_method).lower()
        if method not in ADV_METHODS:
            raise ValueError(f"Unknown adv_method {args.adv_method!r}; choose one of {list(ADV_METHODS)}.")
        args.adv_method = method
    _check_numbers(args)
    _check_jtlat_fields(args)
    _check_attack_names(args)
    _check_metric_for_best_model(args)
    if args.ddp_find_unused_parameters is False and args.adv_method in MOE_ONLY_METHODS:
        raise ValueError(
            f"adv_method={args.adv_method!r} updates router and expert parameters in separate passes, which "
            "leaves parameters unused under DistributedDataParallel: keep ddp_find_unused_parameters=True."
        )


def _check_numbers(args) -> None:
    _check_range("adv_eps", args.adv_eps, 0.0, 1.0)
    if args.eval_attack_eps is not None:
        _check_range("eval_attack_eps", args.eval_attack_eps, 0.0, 1.0)
    _check_int("adv_steps", args.adv_steps, 0)
    _check_int("eval_attack_steps", args.eval_attack_steps, 0)
    _check_int("jtlat_top_k", args.jtlat_top_k, 1)
    if args.eval_max_samples is not None:
        _check_int("eval_max_samples", args.eval_max_samples, 1)
    if args.adv_step_size is not None:
        _check_range("adv_step_size", args.adv_step_size, 0.0, low_inclusive=False)
    for name in _NON_NEGATIVE_WEIGHTS:
        _check_range(name, getattr(args, name), 0.0)
    _check_range("temporal_momentum", args.temporal_momentum, 0.0, 1.0)
    if args.adv_norm not in NORMS:
        raise ValueError(f"adv_norm must be one of {list(NORMS)}, got {args.adv_norm!r}.")
    if args.temporal_step not in TEMPORAL_STEPS:
        raise ValueError(f"temporal_step must be one of {list(TEMPORAL_STEPS)}, got {args.temporal_step!r}.")


def _check_jtlat_fields(args) -> None:
    args.jtlat_steps = _normalise_jtlat_steps(args.jtlat_steps)
    if args.jtlat_router_balance not in JTLAT_ROUTER_BALANCES:
        raise ValueError(
            f"jtlat_router_balance must be one of {list(JTLAT_ROUTER_BALANCES)}, got {args.jtlat_router_balance!r}."
        )
    _check_range("jtlat_router_balance_temperature", args.jtlat_router_balance_temperature, 0.0, low_inclusive=False)
    if args.jtlat_update not in JTLAT_UPDATES:
        raise ValueError(f"jtlat_update must be one of {list(JTLAT_UPDATES)}, got {args.jtlat_update!r}.")
    if args.jtlat_router_target not in ("hard", "soft"):
        raise ValueError(f"jtlat_router_target must be 'hard' or 'soft', got {args.jtlat_router_target!r}.")
    if args.jtlat_router_attack not in ("tlga-r", "tla-r", "pgd-r"):
        raise ValueError(f"jtlat_router_attack must be 'tlga-r', 'tla-r' or 'pgd-r', got {args.jtlat_router_attack!r}.")
    if args.jtlat_expert_attack not in (None, "tla-e"):
        raise ValueError(f"jtlat_expert_attack must be None or 'tla-e', got {args.jtlat_expert_attack!r}.")
    if args.jtlat_model_attack not in ("j-tlga", "j-tla", "tla-m", "pgd"):
        raise ValueError(
            f"jtlat_model_attack must be 'j-tlga', 'j-tla', 'tla-m' or 'pgd', got {args.jtlat_model_attack!r}."
        )


def _check_attack_names(args) -> None:
    if isinstance(args.eval_attacks, str):
        args.eval_attacks = [name for name in args.eval_attacks.replace(",", " ").split() if name]
    args.eval_attacks = [_attack_name("eval_attacks", name) for name in (args.eval_attacks or [])]
    if len(set(args.eval_attacks)) != len(args.eval_attacks):
        raise ValueError(f"eval_attacks lists an attack twice: {args.eval_attacks}.")
    if args.adv_attack is not None:
        args.adv_attack = _attack_name("adv_attack", args.adv_attack)
    args.advmoe_router_attack = _attack_name("advmoe_router_attack", args.advmoe_router_attack)


def _check_metric_for_best_model(args) -> None:
    """A robust metric selected for the best checkpoint must be one that evaluation reports."""
    metric = args.metric_for_best_model
    if metric is None:
        return
    bare = metric[len("eval_") :] if metric.startswith("eval_") else metric
    if bare.startswith(ROBUST_METRIC_PREFIX):
        attack = bare[len(ROBUST_METRIC_PREFIX) :]
        if attack not in args.eval_attacks:
            raise ValueError(
                f"metric_for_best_model={metric!r} needs {attack!r} in eval_attacks (got {args.eval_attacks})."
            )
    elif bare == WORST_CASE_METRIC and not args.eval_attacks:
        raise ValueError(f"metric_for_best_model={metric!r} needs at least one attack in eval_attacks.")


def _check_range(name: str, value, low: float, high: float = math.inf, low_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    above_low = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above_low and value <= high):
        interval = ("[" if low_inclusive else "(") + f"{low:g}, " + ("inf)" if high == math.inf else f"{high:g}]")
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}.")


def _attack_name(field_name: str, name) -> str:
    try:
        return resolve_attack_name(str(name))
    except ValueError as err:
        raise ValueError(f"{field_name}: {err}") from None


def _check_int(name, value, low) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _normalise_jtlat_steps(steps) -> list[str]:
    if isinstance(steps, str):
        steps = [s for s in steps.replace(",", " ").split() if s]
    normalised = []
    for step in steps or []:
        name = _JTLAT_STEP_ALIASES.get(str(step).lower(), str(step).lower())
        if name not in JTLAT_STEPS:
            raise ValueError(f"Unknown J-TLAT step {step!r}; choose among {list(JTLAT_STEPS)} (or 1, 2, 3).")
        if name in normalised:
            raise ValueError(f"jtlat_steps lists {name!r} twice: {steps}.")
        normalised.append(name)
    if not normalised:
        raise ValueError("jtlat_steps must name at least one of 'router', 'expert', 'model'.")
    return [name for name in JTLAT_STEPS if name in normalised]
