"""TRADES (Zhang et al., 2019): clean cross-entropy plus β · KL(F(x) ‖ F(x_adv)), ``x_adv`` maximising the KL."""

from __future__ import annotations

import torch

from ..attacks.trades import kl_divergence
from .method import TrainingMethod
from .phases import PhaseLoss, TrainingPhase

__all__ = ["TRADES"]


class TRADES(TrainingMethod):
    """``adv_method="trades"``: ``CE(F(x), y) + β · KL(F(x) ‖ F(x_adv))`` + aux, ``β = trades_beta``; the adversarial
    clips come from TRADES' own KL maximisation (`hf_videomoe.attacks.trades.trades_adversarial`)."""

    name = "trades"
    label = "TRADES"
    argument_prefix = "trades"

    def phases(self, args, global_step):
        return [TrainingPhase("model", self.label, "all", "trades")]

    def phase_loss(self, step, model, phase):
        x_adv = step.adversarial_examples(model, phase.attack)
        out = step.forward(model, torch.cat([step.pixel_values, x_adv]))
        clean_logits, adv_logits = out.logits.split(step.batch_size)
        clean_ce = step.task_loss(clean_logits, step.labels)
        kl = kl_divergence(clean_logits, adv_logits)
        terms = {"clean_ce": clean_ce, "trades_kl": kl, "adv_ce": step.task_loss(adv_logits.detach(), step.labels)}
        return step.with_aux_loss(PhaseLoss(clean_ce + step.args.trades_beta * kl, terms, adv_logits), out)
