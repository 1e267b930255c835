"""AdvMoE-style alternating router / expert adversarial training (Zhang et al., 2023)."""

from __future__ import annotations

from .method import TrainingMethod
from .pgd_at import adversarial_ce_loss
from .phases import TrainingPhase

__all__ = ["AdvMoE"]


class AdvMoE(TrainingMethod):
    """``adv_method="advmoe"``: even optimizer steps update every non-router parameter on PGD examples, odd steps
    update only the routers on ``advmoe_router_attack`` examples; both minimise ``CE(F(x_adv), y)`` + aux."""

    name = "advmoe"
    label = "AdvMoE"
    requires_moe = True
    argument_prefix = "advmoe"

    def phases(self, args, global_step):
        if global_step % 2 == 0:
            return [TrainingPhase("expert", "AdvMoE expert step", "non_router", args.adv_attack or "pgd")]
        return [TrainingPhase("router", "AdvMoE router step", "router", args.advmoe_router_attack)]

    def all_phases(self, args):
        return self.phases(args, 0) + self.phases(args, 1)

    def phase_loss(self, step, model, phase):
        return adversarial_ce_loss(step, model, phase)
