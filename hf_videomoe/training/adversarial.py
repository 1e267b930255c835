"""The attacks of an adversarial run: their keyword arguments under the training arguments, and the training attacks,
built (and validated) once before training starts and then reused by every step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..attacks import ATTACKS, Attack, build_attack

if TYPE_CHECKING:  # pragma: no cover
    from .arguments import AdversarialTrainingArguments

__all__ = ["TrainingAttacks", "attack_kwargs"]


def attack_kwargs(
    args: AdversarialTrainingArguments, name: str, *, eps: float, steps: int, step_size: float | None
) -> dict[str, Any]:
    """`build_attack` keyword arguments for attack ``name`` under ``args``.

    The paper's attacks (those with temporal adaptive steps: ``tla-*``, ``tlga-r``, ``j-tla``, ``j-tlga``) also get
    the λ of the component they attack (λ_R for router attacks, λ_E for TLA-E, λ_F and λ_R for the joint ones),
    γ1, γ2, β and the temporal step rule; standard attacks keep their own (uniform-step) defaults.
    """
    cls = ATTACKS[name]
    kwargs: dict[str, Any] = {"eps": eps, "steps": steps, "norm": args.adv_norm}
    if step_size is not None:
        kwargs["step_size"] = step_size
    if getattr(cls, "default_temporal_step", "uniform") != "uniform":
        kwargs.update(args.paper_attack_kwargs(cls))
    accepted = cls.accepted_kwargs()
    return {key: value for key, value in kwargs.items() if key in accepted}


class TrainingAttacks:
    """The attacks that generate a run's training examples, by name: each built once with the training budget
    (``adv_eps``, ``adv_steps``, ``adv_step_size``); its seed is set before every call.

    Args:
        args: the run's arguments.
        is_moe: whether the model has MoE layers (attacks on routers or experts need them).
    """

    def __init__(self, args: AdversarialTrainingArguments, is_moe: bool):
        self.args = args
        self.is_moe = is_moe
        self.built: dict[str, Attack] = {}

    def attack(self, name: str) -> Attack:
        """The training attack ``name``, built on first use; `ValueError` if it needs an MoE model and there is
        none."""
        if name not in self.built:
            args = self.args
            kwargs = attack_kwargs(args, name, eps=args.adv_eps, steps=args.adv_steps, step_size=args.adv_step_size)
            if "selection" in ATTACKS[name].accepted_kwargs():
                # Training maximises the attack objective (Madry's inner maximisation): keep the iterate with the
                # highest objective rather than the first one that fools the model.
                kwargs["selection"] = "objective"
            attack = build_attack(name, **kwargs)
            if attack.requires_moe and not self.is_moe:
                raise ValueError(f"The training attack {name!r} needs a Mixture-of-Experts model.")
            self.built[name] = attack
        return self.built[name]
