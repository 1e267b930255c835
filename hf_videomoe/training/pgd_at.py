"""Clean training and PGD-AT (Madry et al., 2018): cross-entropy on clean or on adversarial clips."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .method import TrainingMethod
from .phases import PhaseLoss, TrainingPhase

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import AdversarialTrainer

__all__ = ["CleanTraining", "PGDAT", "adversarial_ce_loss"]


def adversarial_ce_loss(trainer: AdversarialTrainer, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
    """``CE(F(x_adv), y)`` + aux on the phase's adversarial examples."""
    x_adv = trainer.adversarial_examples(model, phase.attack)
    out = trainer.model_forward(model, x_adv)
    ce = trainer.task_loss(out.logits, trainer.step_state.labels)
    return trainer.with_aux_loss(PhaseLoss(ce, {"adv_ce": ce}, out.logits), out)


class CleanTraining(TrainingMethod):
    """``adv_method="none"``: clean cross-entropy (+ the MoE auxiliary loss), the baseline with robust evaluation."""

    name = "none"
    label = "Clean training"

    def phases(self, trainer, global_step):
        return [TrainingPhase("model", self.label, "all", None)]

    def phase_loss(self, trainer, model, phase):
        step = trainer.step_state
        out = trainer.model_forward(model, step.pixel_values)
        ce = trainer.task_loss(out.logits, step.labels)
        return trainer.with_aux_loss(PhaseLoss(ce, {"clean_ce": ce}, out.logits), out)


class PGDAT(TrainingMethod):
    """``adv_method="pgd-at"``: ``CE(F(x_adv), y)`` + aux, ``x_adv`` from ``args.adv_attack`` (default PGD)."""

    name = "pgd-at"
    label = "PGD-AT"

    def phases(self, trainer, global_step):
        return [TrainingPhase("model", self.label, "all", trainer.args.adv_attack or "pgd")]

    def phase_loss(self, trainer, model, phase):
        return adversarial_ce_loss(trainer, model, phase)
