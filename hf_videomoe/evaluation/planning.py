"""What an evaluation runs, decided before any data is touched: the attacks and their budgets, the ε sweep, the steps
check and the per-batch options. Every error about them (unknown attack, option or label, a variant that cannot be
built) is raised here, so that a mistake never surfaces after the first batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .arguments import RobustnessArguments
from .attack_specs import AttackSpec, budget_plan, resolve_attacks
from .runner import EvaluationOptions

__all__ = ["EvaluationPlan", "plan_evaluation"]


@dataclass
class EvaluationPlan:
    """The resolved attacks of an evaluation and what runs besides them (built by [`plan_evaluation`])."""

    specs: list[AttackSpec]
    #: budget key → ``{"norm", "eps", "attacks"}``: a worst case is taken per budget (`budget_plan`).
    budgets: dict[str, dict[str, Any]]
    headline_budget: str
    exact_attacks: list[str]
    sweep_attacks: list[str]
    #: attack label → the doubled step count of the steps check.
    steps_check: dict[str, int]
    options: EvaluationOptions

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.specs]

    def headline_attacks(self, white_box: bool) -> list[str]:
        """The white-box (or black-box) attacks at the headline budget: attacks are only compared within one budget
        (a stronger attack at a larger ε is no sign of masking)."""
        headline = self.budgets[self.headline_budget]["attacks"]
        return [s.label for s in self.specs if s.white_box == white_box and s.label in headline]


def _check_known(what: str, names: list[str], labels: list[str]) -> None:
    unknown = [a for a in names if a not in labels]
    if unknown:
        raise ValueError(f"{what} {unknown} are not among the evaluated attacks {labels}.")


def _base_steps(spec: AttackSpec) -> int:
    return int(spec.settings().get("steps", getattr(spec.attack, "steps", 1)) or 1)


def _steps_check(args: RobustnessArguments, specs: list[AttackSpec], exact_attacks: list[str]) -> dict[str, int]:
    """The attacks the steps check reruns, with their doubled step counts (each variant built once, to fail now)."""
    if not args.check_steps:
        return {}
    labels = [s.label for s in specs]
    multi_step = [s for s in specs if s.white_box and _base_steps(s) > 1]
    if args.check_steps_attacks == "all":
        chosen = multi_step
    elif args.check_steps_attacks is None:
        chosen = multi_step[:1]
    else:
        names = (
            [args.check_steps_attacks] if isinstance(args.check_steps_attacks, str) else list(args.check_steps_attacks)
        )
        _check_known("check_steps_attacks", names, labels)
        chosen = [s for s in specs if s.label in names]
    if args.mode == "cascade":
        if args.check_steps_attacks is None:  # the first multi-step attack that runs on every sample
            chosen = [s for s in multi_step if s.label in exact_attacks][:1] or chosen
        cascaded = [s.label for s in chosen if s.label not in exact_attacks]
        if cascaded:
            raise ValueError(
                f"check_steps in mode='cascade' needs attacks that run on every sample, but {cascaded} "
                "run only on the samples still standing; list them in exact_attacks or use "
                "mode='full'."
            )
    steps_check = {}
    for spec in chosen:
        doubled = 2 * _base_steps(spec)
        steps_check[spec.label] = doubled
        spec.variant(steps=doubled)  # fail now, not after the first batch
    return steps_check


def plan_evaluation(args: RobustnessArguments, moe: bool) -> EvaluationPlan:
    """Resolve ``args.attacks`` (``moe``: whether MoE-only attacks apply) and check the options that name attacks."""
    shared = {"eps": args.eps, "norm": args.norm, "steps": args.steps, "step_size": args.step_size, "seed": args.seed}
    specs = resolve_attacks(args.attacks, shared=shared, extra=dict(args.attack_kwargs or {}), moe=moe)
    budgets, headline_budget = budget_plan(specs, args.eps, args.norm, args.mode)  # a worst case per budget
    labels = [s.label for s in specs]
    exact_attacks = list(args.exact_attacks or [])
    _check_known("exact_attacks", exact_attacks, labels)
    if args.sweep_attacks is None:
        sweep_attacks = labels if args.eps_sweep else []
    else:
        sweep_attacks = list(args.sweep_attacks)
        _check_known("sweep_attacks", sweep_attacks, labels)
    steps_check = _steps_check(args, specs, exact_attacks)
    for spec in specs:
        if spec.label in sweep_attacks:
            for e in args.eps_sweep or []:
                spec.variant(eps=e)  # fail now, not after the first batch

    options = EvaluationOptions(
        seed=int(args.seed),
        eps=args.eps,
        diagnostics=bool(args.diagnostics),
        check_determinism=bool(args.check_determinism),
        check_gradients=bool(args.check_gradients),
        eps_sweep=args.eps_sweep,
        sweep_attacks=list(sweep_attacks),
        steps_check=steps_check or None,
        steps_check_samples=int(args.check_steps_samples),
        return_per_sample=bool(args.return_per_sample),
        cascade=args.mode == "cascade",
        exact_attacks=tuple(exact_attacks),
        budgets=budgets,
        headline_budget=headline_budget,
    )
    return EvaluationPlan(
        specs=specs,
        budgets=budgets,
        headline_budget=headline_budget,
        exact_attacks=exact_attacks,
        sweep_attacks=sweep_attacks,
        steps_check=steps_check,
        options=options,
    )
