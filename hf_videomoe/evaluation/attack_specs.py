"""The attacks of an evaluation: names, dicts of settings or `Attack` instances resolved into [`AttackSpec`]s, and
variants of them (other ε for the sweep, doubled steps for the steps check)."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .flags import BLACK_BOX_ATTACKS

__all__ = [
    "ATTACK_PRESETS",
    "AttackSpec",
    "attacks_module",
    "budget_key",
    "budget_plan",
    "check_eps",
    "expand_presets",
    "json_default",
    "resolve_attacks",
    "spec_eps",
]

#: Attacks run when ``attacks=None``: three standard white-box attacks, the gradient-free Square (the gradient-masking
#: check needs it) and the paper's strongest MoE attack (dropped automatically for dense models).
DEFAULT_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "square", "j-tlga")

#: Named groups of attacks that ``attacks`` may contain as one entry (expanded in place, in this order).
#: ``"autoattack"``: AutoAttack's *standard* version (Croce & Hein, ICML 2020) — APGD-CE and APGD-T (9 target
#: classes, capped at the number of classes − 1) with 100 steps each, and Square with 5,000 queries. Its FAB-T is left
#: out: a minimum-norm attack that AutoAttack itself finds adds almost nothing to the others' worst case, at the
#: cost of a per-step projection problem we have no video implementation of. Run it with ``mode="cascade"`` (each
#: attack only on the clips still standing), as AutoAttack does.
ATTACK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "autoattack": {
        "apgd-ce": {"name": "apgd-ce", "steps": 100},
        "apgd-t": {"name": "apgd-t", "steps": 100, "num_target_classes": 9},
        "square": {"name": "square", "steps": 5000},
    },
}


@dataclass
class AttackSpec:
    label: str
    attack: Any
    name: str
    kwargs: dict[str, Any] | None  # build_attack kwargs when built by name (None for user instances)
    white_box: bool
    variants: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        settings = self.attack.settings() if hasattr(self.attack, "settings") else {}
        return json.loads(json.dumps(settings, default=json_default))

    def variant(self, **changes) -> Any:
        """The same attack with some settings changed (``eps`` for the sweep, ``steps`` for the steps check)."""
        key = json.dumps(changes, sort_keys=True)
        if key not in self.variants:
            self.variants[key] = attack_variant(self, changes)
        return self.variants[key]


def spec_eps(spec: AttackSpec) -> float | None:
    value = (spec.kwargs or {}).get("eps", getattr(spec.attack, "eps", None))
    return None if value is None else float(value)


def budget_key(norm: str, eps: float) -> str:
    """``"linf:0.03137254901960784"``: the key of one perturbation budget in ``worst_case_by_budget``."""
    return f"{norm}:{float(eps)!r}"


def budget_plan(specs: list[AttackSpec], eps: float, norm: str, mode: str) -> tuple[dict[str, dict[str, Any]], str]:
    """The attacks grouped by the budget (norm, ε) each one actually ran at, and the key of the headline budget (the
    shared ``eps`` / ``norm`` when some attack used it). A worst case is only ever taken within one budget: cascade
    mode, which has a single worst case over every attack, refuses attacks with different budgets."""
    budgets: dict[str, dict[str, Any]] = {}
    for spec in specs:
        own_eps = spec_eps(spec)
        own_norm = str(spec.settings().get("norm") or getattr(spec.attack, "norm", None) or norm)
        if own_eps is None:  # an attack that does not state its budget is taken to use the shared one
            own_eps, own_norm = eps, norm
        key = next(
            (k for k, b in budgets.items() if b["norm"] == own_norm and math.isclose(b["eps"], own_eps, rel_tol=1e-9)),
            None,
        )
        if key is None:
            key = budget_key(own_norm, own_eps)
            budgets[key] = {"norm": own_norm, "eps": float(own_eps), "attacks": []}
        budgets[key]["attacks"].append(spec.label)
    shared = next(
        (k for k, b in budgets.items() if b["norm"] == norm and math.isclose(b["eps"], eps, rel_tol=1e-9)), None
    )
    if len(budgets) > 1 and mode == "cascade":
        found = "; ".join(f"{b['norm']} ε={b['eps']:.6g}: {b['attacks']}" for b in budgets.values())
        raise ValueError(
            f"attacks must share one budget in mode='cascade' (its worst case spans every attack), got "
            f"{found}; use mode='full' to get a worst case per budget."
        )
    if shared is None:
        headline = next(iter(budgets))
        warnings.warn(
            f"eps={eps!r} ({norm}) is used by no attack: every attack sets its own budget, so the report's "
            f"headline budget is {budgets[headline]['norm']} ε={budgets[headline]['eps']!r}.",
            stacklevel=4,  # budget_plan ← plan_evaluation ← evaluate_robustness ← the caller
        )
        return budgets, headline
    return budgets, shared


def json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def attacks_module():
    try:
        from .. import attacks as attacks_module
    except ImportError as err:  # pragma: no cover - only while the attacks package is missing
        raise ImportError(
            f"Building attacks by name needs hf_videomoe.attacks, which failed to import ({err}). Pass Attack "
            "instances instead."
        ) from err
    return attacks_module


def attack_variant(spec: AttackSpec, changes: dict[str, Any]) -> Any:
    if spec.kwargs is not None:  # built by name: rebuild with the changed settings (default step sizes rescale)
        return attacks_module().build_attack(spec.name, **{**spec.kwargs, **changes})
    attack = spec.attack
    replace = getattr(attack, "replace", None)
    if callable(replace):
        return replace(**changes)
    if all(hasattr(attack, key) for key in changes):
        # A copy with the attribute changed: the library's attacks derive their default step size from eps / steps
        # on the fly, so it rescales; an explicit step size stays as given.
        clone = copy.deepcopy(attack)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone
    settings = spec.settings()
    try:
        module = attacks_module()
        kwargs = {k: v for k, v in settings.items() if k != "name"}
        return module.build_attack(settings.get("name", spec.name), strict=False, **{**kwargs, **changes})
    except Exception as err:
        raise ValueError(
            f"Cannot derive a variant of attack {spec.label!r} with {changes}: it has no such attribute and cannot be "
            f"rebuilt from its settings() ({err}). Pass the attack by name to use eps_sweep / check_steps."
        ) from err


def is_attack_instance(obj: Any) -> bool:
    return callable(getattr(obj, "perturb", None)) or (callable(obj) and hasattr(obj, "settings"))


def expand_presets(entries: list[tuple[str | None, Any]]) -> list[tuple[str | None, Any]]:
    """Replace every preset name of [`ATTACK_PRESETS`] (a bare string entry) by its attacks."""
    expanded: list[tuple[str | None, Any]] = []
    for label, item in entries:
        key = item.strip().lower() if isinstance(item, str) else None
        if label is None and key in ATTACK_PRESETS:
            expanded.extend((name, dict(options)) for name, options in ATTACK_PRESETS[key].items())
        else:
            expanded.append((label, item))
    return expanded


def resolve_attacks(
    attacks: Any,
    *,
    shared: dict[str, Any],
    extra: dict[str, Any],
    moe: bool,
) -> list[AttackSpec]:
    """Turn the ``attacks`` argument into specs (preset names such as ``"autoattack"`` expanded); every error (unknown
    name or option, duplicate label, MoE attack on a dense model) is raised here, before any data is touched."""
    if attacks is None:
        attacks = attacks_module().split_attacks_for_model(list(DEFAULT_ATTACKS), moe)[0]  # the CLI drops the same
    if isinstance(attacks, str) or is_attack_instance(attacks):
        attacks = [attacks]
    if isinstance(attacks, Mapping):
        entries: list[tuple[str | None, Any]] = list(attacks.items())
    else:
        entries = [(None, a) for a in attacks]
    entries = expand_presets(entries)
    if not entries:
        raise ValueError("attacks is empty: give at least one attack name or Attack instance.")

    specs: list[AttackSpec] = []
    used_extra: set[str] = set()
    for label, item in entries:
        if isinstance(item, (str, Mapping)) or item is None:
            module = attacks_module()
            options = dict(item) if isinstance(item, Mapping) else {}
            raw_name = item if isinstance(item, str) else options.pop("name", label)
            if not raw_name:
                raise ValueError(f"Attack entry {item!r} has no name.")
            name = module.resolve_attack_name(raw_name)  # ValueError listing valid names for unknown ones
            cls = module.ATTACKS[name]
            accepted = set(cls.accepted_kwargs())
            unknown = sorted(set(options) - accepted)
            if unknown:
                raise ValueError(f"Attack {name!r} does not take {unknown}; it accepts {sorted(accepted)}.")
            if cls.requires_moe and not moe:
                raise ValueError(
                    f"Attack {name!r} targets MoE routers / experts, but the model has no MoE layer. Use attacks that "
                    f"apply to dense models: {', '.join(module.DENSE_ATTACKS)}."
                )
            base = dict(shared)
            if name in BLACK_BOX_ATTACKS:
                # Square's `steps` are queries (default 1000) and it has no step size: the gradient attacks' shared
                # steps / step size would cripple it. Configure it per attack: {"square": {"steps": 5000}}.
                base.pop("steps", None)
                base.pop("step_size", None)
            base.update({k: v for k, v in extra.items() if k in accepted})
            used_extra |= {k for k in extra if k in accepted}
            kwargs = {k: v for k, v in {**base, **options}.items() if v is not None and k in accepted}
            attack = module.build_attack(name, **kwargs)
            specs.append(
                AttackSpec(label=(label or name).strip(), attack=attack, name=name, kwargs=kwargs, white_box=True)
            )
        elif is_attack_instance(item):
            name = str(getattr(item, "name", type(item).__name__)).lower()
            if getattr(item, "requires_moe", False) and not moe:
                raise ValueError(f"Attack {name!r} targets MoE routers / experts, but the model has no MoE layer.")
            specs.append(AttackSpec(label=(label or name), attack=item, name=name, kwargs=None, white_box=True))
        else:
            raise TypeError(f"Attacks must be names, dicts of build_attack kwargs or Attack instances, got {item!r}.")
    unused = sorted(set(extra) - used_extra)
    if unused and any(s.kwargs is not None for s in specs):
        raise ValueError(f"attack_kwargs {unused} are not accepted by any of the attacks {[s.label for s in specs]}.")
    for spec in specs:
        spec.white_box = not (spec.name in BLACK_BOX_ATTACKS or getattr(spec.attack, "black_box", False))
    labels = [s.label for s in specs]
    duplicates = sorted({l for l in labels if labels.count(l) > 1})
    if duplicates:
        raise ValueError(
            f"Attack names must be unique, got {duplicates} more than once; pass a dict {{label: kwargs or Attack}} "
            "to evaluate variants of one attack."
        )
    return specs


def check_eps(eps: Any, norm: str, what: str) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {eps!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive budget in pixel units (e.g. 8/255), got {eps!r}.")
    if norm == "linf" and value > 1:
        raise ValueError(
            f"{what}={eps!r} exceeds 1, the whole [0, 1] pixel range, for an L∞ budget; give ε in [0, 1] pixel units "
            f"(8/255 ≈ 0.031), not in 0-255 units."
        )
    return value
