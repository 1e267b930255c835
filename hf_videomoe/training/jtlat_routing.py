"""What J-TLAT computes from the routers: step 1's routing objective, the capture of router inputs that lets steps 1
and 3 share a pass, and step 2's choice of experts per clip (see [`~hf_videomoe.training.JTLATTrainer`])."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.terms import router_consistency_ce, router_lipschitz_ratio
from ..moe import (
    clip_router_probabilities,
    load_balancing_loss,
    moe_blocks,
    router_logits_only,
    sharpened_balance_loss,
)
from .phases import PhaseLoss, TrainingPhase

if TYPE_CHECKING:  # pragma: no cover
    from .step import StepContext

__all__ = ["captured_router_inputs", "expert_selection", "router_loss", "router_objective"]


def router_loss(step: StepContext, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
    """J-TLAT step 1, ``CE(R(x_r), r(x)) + λ · L_Lip(R; x, x_r)`` per clip: one forward pass on ``x_r`` with the clean
    router logits from the shared clean pass (``lipschitz_detach_clean``), else one on ``[x, x_r]``.

    Each router's logits are recomputed from its *detached* inputs: step 1 trains every router to keep its own
    decisions, and ``ℓ_Router`` of one layer does not reach the routers of earlier layers through the gate's
    straight-through gradient (a surrogate, not a change of the forward value). This is also what lets steps 1 and
    3 share a pass exactly (see `JTLATTrainer.fuses_router_and_model_steps`)."""
    state = step.state
    x = state.pixel_values
    x_adv = step.adversarial_examples(model, phase.attack)
    unwrapped = step.unwrap(model)

    def route(pixel_values):  # only the routers' inputs are read: no graph, and nothing after the last router
        with torch.no_grad():
            router_logits_only(unwrapped, lambda: step.forward(unwrapped, pixel_values))

    with captured_router_inputs(unwrapped) as router_logits_of:
        if step.args.lipschitz_detach_clean:
            clean_rl = router_logits_of.own_layers(step.clean_outputs(model).router_logits)
            route(x_adv)
            adv_rl = router_logits_of(slice(None))
        else:
            route(torch.cat([x, x_adv]))
            clean_rl = router_logits_of(slice(None, state.batch_size))
            adv_rl = router_logits_of(slice(state.batch_size, None))
    # Step 2 picks each clip's experts from these adversarial router probabilities (before step 1's update unless
    # the update is sequential, which drops them: see `JTLATTrainer.apply_sequential_update`).
    state.adv_router_logits[phase.attack] = tuple(r.detach() for r in adv_rl)
    return router_objective(step, clean_rl, adv_rl, x, x_adv)


def router_objective(step: StepContext, clean_rl, adv_rl, x: torch.Tensor, x_adv: torch.Tensor) -> PhaseLoss:
    """Step 1's per-clip objective from the clean and adversarial router logits: routing consistency, the router's
    Lipschitz ratio (``router_lipschitz_weight``) and the load-balancing term (``jtlat_router_balance_weight``)."""
    args = step.args
    consistency = router_consistency_ce(adv_rl, clean_rl, soft_targets=args.jtlat_router_target == "soft")
    terms = {"router_ce": consistency}
    per_sample = consistency
    if args.router_lipschitz_weight:
        lip = router_lipschitz_ratio(clean_rl, adv_rl, x, x_adv)
        terms["lipschitz_router"] = lip
        per_sample = consistency + args.router_lipschitz_weight * lip
    if args.jtlat_router_balance_weight:
        # Counterweight to the self-reinforcing consistency CE, which otherwise collapses routing (METHOD.md §3).
        config = step.config
        if args.jtlat_router_balance == "sharp":
            balance = sharpened_balance_loss(adv_rl, config.num_experts, args.jtlat_router_balance_temperature)
        else:
            balance = load_balancing_loss(adv_rl, config.num_experts, config.num_experts_per_tok)
        terms["router_balance"] = balance
        per_sample = per_sample + args.jtlat_router_balance_weight * balance
    return PhaseLoss(per_sample, terms, None)


def expert_selection(step: StepContext, model: nn.Module, phase: TrainingPhase) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's experts for J-TLAT step 2 and their weights: the ``jtlat_top_k`` largest clip-level router
    probabilities on the adversarial clip, renormalised to sum to 1. Returns ``(indices, weights)``, both
    ``(batch, k)``, detached."""
    adv_rl = step.state.adv_router_logits.get(phase.attack)
    if adv_rl is None:  # no router step this batch: route the adversarial clips once, without gradient
        x_adv = step.adversarial_examples(model, phase.attack)
        unwrapped = step.unwrap(model)
        with torch.no_grad():
            adv_rl = router_logits_only(unwrapped, lambda: step.forward(unwrapped, x_adv))
    probs = clip_router_probabilities(adv_rl).detach()
    top_p, top_i = probs.topk(min(step.args.jtlat_top_k, probs.shape[-1]), dim=-1)
    return top_i, top_p / top_p.sum(dim=-1, keepdim=True).clamp_min(1e-12)


@contextlib.contextmanager
def captured_router_inputs(model: nn.Module):
    """Record the inputs of every router during the ``with`` block; yields ``router_logits_of(rows)``, which recomputes
    each router's float32 logits from its recorded (detached) inputs, restricted to batch ``rows`` (a slice).

    With model-level routing only the first MoE layer has a router; ``router_logits_of.own_layers(router_logits)``
    picks the matching entries of a model output's per-MoE-layer ``router_logits``."""
    blocks = moe_blocks(model)
    owners = [position for position, block in enumerate(blocks) if block.router is not None]
    routers = [blocks[position].router for position in owners]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        router.register_forward_pre_hook(lambda module, args, i=i: inputs.__setitem__(i, args[0]))
        for i, router in enumerate(routers)
    ]

    def router_logits_of(rows: slice) -> tuple[torch.Tensor, ...]:
        return tuple(
            F.linear(inputs[i][rows].detach().float(), router.weight.float()) for i, router in enumerate(routers)
        )

    router_logits_of.own_layers = lambda router_logits: tuple(router_logits[position] for position in owners)
    try:
        yield router_logits_of
    finally:
        for hook in hooks:
            hook.remove()
