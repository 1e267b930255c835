"""Clean training and PGD-AT (Madry et al., 2018): cross-entropy on clean or on adversarial clips."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .method import TrainingMethod
from .phases import PhaseLoss, TrainingPhase

if TYPE_CHECKING:  # pragma: no cover
    from .step import StepContext

__all__ = ["CleanTraining", "PGDAT", "adversarial_ce_loss"]


def adversarial_ce_loss(step: StepContext, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
    """``CE(F(x_adv), y)`` + aux on the phase's adversarial examples."""
    x_adv = step.adversarial_examples(model, phase.attack)
    out = step.forward(model, x_adv)
    ce = step.task_loss(out.logits, step.labels)
    return step.with_aux_loss(PhaseLoss(ce, {"adv_ce": ce}, out.logits), out)


class CleanTraining(TrainingMethod):
    """``adv_method="none"``: clean cross-entropy (+ the MoE auxiliary loss), the baseline with robust evaluation."""

    name = "none"
    label = "Clean training"

    def phases(self, args, global_step):
        return [TrainingPhase("model", self.label, "all", None)]

    def phase_loss(self, step, model, phase):
        out = step.forward(model, step.pixel_values)
        ce = step.task_loss(out.logits, step.labels)
        return step.with_aux_loss(PhaseLoss(ce, {"clean_ce": ce}, out.logits), out)


class PGDAT(TrainingMethod):
    """``adv_method="pgd-at"``: ``CE(F(x_adv), y)`` + aux, ``x_adv`` from ``args.adv_attack`` (default PGD)."""

    name = "pgd-at"
    label = "PGD-AT"

    def phases(self, args, global_step):
        return [TrainingPhase("model", self.label, "all", args.adv_attack or "pgd")]

    def phase_loss(self, step, model, phase):
        return adversarial_ce_loss(step, model, phase)
