"""Temporal Lipschitz adversarial training: single-stage TLAT, and J-TLAT's phases and single-pass losses (its model
step is TLAT's loss; its router step comes from `jtlat_routing`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..attacks.terms import lipschitz_ratio
from .jtlat_routing import captured_router_inputs, router_loss, router_objective
from .method import TrainingMethod
from .phases import PhaseLoss, TrainingPhase

if TYPE_CHECKING:  # pragma: no cover
    from .step import StepContext

__all__ = ["JTLAT", "TLAT", "fused_router_model_loss", "lipschitz_model_loss"]


def lipschitz_model_loss(
    step: StepContext, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> PhaseLoss:
    """``CE(F(x_adv), y) + λ · L_Lip(F; x, x_adv)`` + aux (TLAT, J-TLAT step 3).

    With ``lipschitz_detach_clean`` (default) ``F(x)`` comes from the step's shared clean forward pass without
    gradient; otherwise ``[x, x_adv]`` go through one forward pass and both sides get gradients. With λ = 0 only
    ``x_adv`` is forwarded.
    """
    weight = step.args.lipschitz_weight
    if weight == 0:
        out = step.forward(model, x_adv)
        ce = step.task_loss(out.logits, y)
        return step.with_aux_loss(PhaseLoss(ce, {"adv_ce": ce}, out.logits), out)
    if step.args.lipschitz_detach_clean:
        clean_logits = step.clean_outputs(model).logits
        out = step.forward(model, x_adv)
        adv_logits = out.logits
    else:
        out = step.forward(model, torch.cat([x, x_adv]))
        clean_logits, adv_logits = out.logits.split(x.shape[0])
    ce = step.task_loss(adv_logits, y)
    lip = lipschitz_ratio(clean_logits, adv_logits, x, x_adv)
    terms = {"adv_ce": ce, "lipschitz_model": lip, "clean_ce": step.task_loss(clean_logits.detach(), y)}
    return step.with_aux_loss(PhaseLoss(ce + weight * lip, terms, adv_logits), out)


def fused_router_model_loss(step: StepContext, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
    """J-TLAT steps 1 and 3 from step 3's forward pass (see [`JTLAT.fuses_router_and_model_steps`]): the router
    inputs of that pass are captured and the router logits recomputed from them detached, so ``ℓ_Router``'s gradient
    reaches the router weights only."""
    state, args = step.state, step.args
    x, y = state.pixel_values, state.labels
    x_adv = step.adversarial_examples(model, phase.attack)
    with captured_router_inputs(step.unwrap(model)) as router_logits_of:
        model_loss = lipschitz_model_loss(step, model, x, x_adv, y)
    batch = state.batch_size
    adv_rl = router_logits_of(slice(-batch, None))
    if args.lipschitz_detach_clean or not args.lipschitz_weight:
        clean_rl = router_logits_of.own_layers(step.clean_outputs(model).router_logits)
    else:  # the model step forwarded [x, x_adv]: the clean router logits get their own (detached-input) gradient
        clean_rl = router_logits_of(slice(None, batch))
    routing = router_objective(step, clean_rl, adv_rl, x, x_adv)
    state.adv_router_logits[phase.attack] = tuple(r.detach() for r in adv_rl)
    terms = {
        "loss_router": routing.per_sample,
        **routing.terms,
        "loss_model": model_loss.per_sample,
        **model_loss.terms,
    }
    return PhaseLoss(routing.per_sample + model_loss.per_sample, terms, model_loss.logits)


class TLAT(TrainingMethod):
    """``adv_method="tlat"``: single-stage temporal Lipschitz AT, ``CE(F(x_adv), y) + λ · L_Lip(F; x, x_adv)`` + aux
    on TLA-M examples (``args.adv_attack`` to change them)."""

    name = "tlat"
    label = "TLAT"

    def phases(self, args, global_step):
        return [TrainingPhase("model", self.label, "all", args.adv_attack or "tla-m")]

    def phase_loss(self, step, model, phase):
        x_adv = step.adversarial_examples(model, phase.attack)
        return lipschitz_model_loss(step, model, step.pixel_values, x_adv, step.labels)

    def shares_clean_pass(self, args):
        return args.lipschitz_detach_clean and args.lipschitz_weight != 0


class JTLAT(TrainingMethod):
    """``adv_method="j-tlat"``: the paper's joint router / expert / model training, run by
    [`~hf_videomoe.training.JTLATTrainer`]. The method defines the phases and the losses of step 1 (router), step 3
    (model) and of both in one pass; step 2 (expert) runs one pass per expert in the trainer."""

    name = "j-tlat"
    label = "J-TLAT"
    requires_moe = True
    argument_prefix = "jtlat"
    trainer_name = "JTLATTrainer"

    def phases(self, args, global_step, fused: bool = False):
        """The J-TLAT steps of ``args.jtlat_steps``, in order; with ``fused``, steps 1 and 3 as one phase
        (``"router+model"``) ahead of step 2 (see [`fuses_router_and_model_steps`])."""
        router_attack = args.jtlat_model_attack if args.jtlat_reuse_adversarial else args.jtlat_router_attack
        expert_attack = args.jtlat_expert_attack or router_attack
        phases = {
            "router": TrainingPhase("router", "J-TLAT step 1 (router)", "router", router_attack),
            "expert": TrainingPhase("expert", "J-TLAT step 2 (expert)", "expert", expert_attack),
            "model": TrainingPhase("model", "J-TLAT step 3 (model)", "all", args.jtlat_model_attack),
        }
        if fused:
            fused_phase = TrainingPhase(
                "router+model", "J-TLAT steps 1+3 (router, model)", "all", args.jtlat_model_attack
            )
            return [fused_phase] + ([phases["expert"]] if "expert" in args.jtlat_steps else [])
        return [phases[name] for name in args.jtlat_steps]

    @staticmethod
    def fuses_router_and_model_steps(args, top_k: int) -> bool:
        """Whether steps 1 and 3 share one forward / backward pass.

        When both run on the same adversarial clips (``jtlat_reuse_adversarial``) and routing is top-1 (``top_k``
        experts per token), step 1's router-only gradient is the gradient of ``ℓ_Router`` computed from router logits
        recomputed on *detached* router inputs (see `jtlat_routing.router_loss`). Step 3's forward pass then serves
        both losses and one backward pass applies ``∇ℓ_model`` to all parameters and ``∇ℓ_Router`` to the routers
        only — the same update as two passes, for one pass less. Not under ``jtlat_update="sequential"``, where the
        two steps see different weights.
        """
        return (
            args.jtlat_reuse_adversarial
            and args.jtlat_update == "summed"
            and top_k == 1
            and {"router", "model"} <= set(args.jtlat_steps)
        )

    def phase_loss(self, step, model, phase):
        if phase.name == "router":
            return router_loss(step, model, phase)
        if phase.name == "model":
            x_adv = step.adversarial_examples(model, phase.attack)
            return lipschitz_model_loss(step, model, step.pixel_values, x_adv, step.labels)
        if phase.name == "router+model":
            return fused_router_model_loss(step, model, phase)
        raise ValueError(f"{phase.label} runs one pass per expert in `train_phase`; it has no single-pass loss.")

    def shares_clean_pass(self, args):
        return bool(args.lipschitz_detach_clean)
