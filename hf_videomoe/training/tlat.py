"""Temporal Lipschitz adversarial training: single-stage TLAT, and the model step J-TLAT shares with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..attacks.terms import lipschitz_ratio
from .method import TrainingMethod
from .phases import PhaseLoss, TrainingPhase

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import AdversarialTrainer

__all__ = ["JTLAT", "TLAT", "lipschitz_model_loss"]


def lipschitz_model_loss(
    trainer: AdversarialTrainer, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> PhaseLoss:
    """``CE(F(x_adv), y) + λ · L_Lip(F; x, x_adv)`` + aux (TLAT, J-TLAT step 3).

    With ``lipschitz_detach_clean`` (default) ``F(x)`` comes from the step's shared clean forward pass without
    gradient; otherwise ``[x, x_adv]`` go through one forward pass and both sides get gradients. With λ = 0 only
    ``x_adv`` is forwarded.
    """
    weight = trainer.args.lipschitz_weight
    if weight == 0:
        out = trainer.model_forward(model, x_adv)
        ce = trainer.task_loss(out.logits, y)
        return trainer.with_aux_loss(PhaseLoss(ce, {"adv_ce": ce}, out.logits), out)
    if trainer.args.lipschitz_detach_clean:
        clean_logits = trainer.clean_outputs(model).logits
        out = trainer.model_forward(model, x_adv)
        adv_logits = out.logits
    else:
        out = trainer.model_forward(model, torch.cat([x, x_adv]))
        clean_logits, adv_logits = out.logits.split(x.shape[0])
    ce = trainer.task_loss(adv_logits, y)
    lip = lipschitz_ratio(clean_logits, adv_logits, x, x_adv)
    terms = {"adv_ce": ce, "lipschitz_model": lip, "clean_ce": trainer.task_loss(clean_logits.detach(), y)}
    return trainer.with_aux_loss(PhaseLoss(ce + weight * lip, terms, adv_logits), out)


class TLAT(TrainingMethod):
    """``adv_method="tlat"``: single-stage temporal Lipschitz AT, ``CE(F(x_adv), y) + λ · L_Lip(F; x, x_adv)`` + aux
    on TLA-M examples (``args.adv_attack`` to change them)."""

    name = "tlat"
    label = "TLAT"

    def phases(self, trainer, global_step):
        return [TrainingPhase("model", self.label, "all", trainer.args.adv_attack or "tla-m")]

    def phase_loss(self, trainer, model, phase):
        step = trainer.step_state
        x_adv = trainer.adversarial_examples(model, phase.attack)
        return trainer.lipschitz_model_loss(model, step.pixel_values, x_adv, step.labels)

    def shares_clean_pass(self, args):
        return args.lipschitz_detach_clean and args.lipschitz_weight != 0


class JTLAT(TrainingMethod):
    """``adv_method="j-tlat"``: the paper's joint router / expert / model training, run by
    [`~hf_videomoe.training.JTLATTrainer`] (which defines its phases and losses)."""

    name = "j-tlat"
    label = "J-TLAT"
    requires_moe = True
    argument_prefix = "jtlat"
    trainer_name = "JTLATTrainer"

    def shares_clean_pass(self, args):
        return bool(args.lipschitz_detach_clean)
