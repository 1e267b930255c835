"""The terms attack objectives and J-TLAT's losses are built from, one value per sample: the paper's Lipschitz ratio
(of the model, of an expert path, of the router) and the terms on router logits (consistency with the clean routing,
guidance toward an expert, the weakest and dominant experts). [`~hf_videomoe.attacks.objectives.Objective`] composes
them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..moe import clip_router_probabilities, router_probabilities

LIPSCHITZ_EPS = 1e-12
"""Guard added to the denominator MSE(x, x + delta) of every Lipschitz ratio (delta = 0 gives 0, not NaN)."""

__all__ = [
    "LIPSCHITZ_EPS",
    "check_router_logits",
    "dominant_expert",
    "guidance_ce",
    "lipschitz_ratio",
    "per_sample_mse",
    "router_consistency_ce",
    "router_lipschitz_ratio",
    "stack_router_layers",
    "weakest_expert",
]


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all non-batch dimensions, shape ``(batch,)``, in float32."""
    diff = (a.float() - b.float()).reshape(a.shape[0], -1)
    return diff.pow(2).mean(dim=1)


def lipschitz_ratio(
    clean_out: torch.Tensor, adv_out: torch.Tensor, clean_x: torch.Tensor, adv_x: torch.Tensor
) -> torch.Tensor:
    """The paper's local Lipschitz ratio ``MSE(g(x), g(x + delta)) / MSE(x, x + delta)`` per sample, ``(batch,)``.

    ``clean_out`` / ``adv_out`` are the outputs of the component ``g`` (logits of the whole model or of one expert) on
    the clean and adversarial input. Both MSEs average over every non-batch dimension, so the ratio does not depend on
    the video layout. The denominator is guarded with [`LIPSCHITZ_EPS`]: ``delta = 0`` gives 0 (attacks use a random
    start, so the ratio is informative from the first step).
    """
    return per_sample_mse(clean_out, adv_out) / (per_sample_mse(clean_x, adv_x) + LIPSCHITZ_EPS)


def check_router_logits(router_logits, what: str) -> tuple[torch.Tensor, ...]:
    """``router_logits`` as a tuple, or a `ValueError` naming ``what`` needed them (a dense model has none)."""
    if router_logits is None or len(router_logits) == 0:
        raise ValueError(
            f"{what} needs router logits (one tensor per MoE layer); the model returned none. "
            "Router objectives only apply to Mixture-of-Experts models."
        )
    return tuple(router_logits)


def router_lipschitz_ratio(
    clean_router_logits: Sequence[torch.Tensor],
    adv_router_logits: Sequence[torch.Tensor],
    clean_x: torch.Tensor,
    adv_x: torch.Tensor,
) -> torch.Tensor:
    """Lipschitz ratio of the router, ``(batch,)``: MSE of router *probabilities* over every MoE layer, routing unit
    and expert (each layer weighted equally), divided by ``MSE(x, x + delta)`` (guarded as in [`lipschitz_ratio`])."""
    clean = router_probabilities(check_router_logits(clean_router_logits, "router_lipschitz_ratio"))
    adv = router_probabilities(check_router_logits(adv_router_logits, "router_lipschitz_ratio"))
    numerator = torch.stack([per_sample_mse(c, a) for c, a in zip(clean, adv)]).mean(dim=0)
    return numerator / (per_sample_mse(clean_x, adv_x) + LIPSCHITZ_EPS)


def router_consistency_ce(
    adv_router_logits: Sequence[torch.Tensor],
    clean_router_logits: Sequence[torch.Tensor],
    soft_targets: bool = False,
) -> torch.Tensor:
    """Cross-entropy of the adversarial router against the clean routing of each routing unit, ``(batch,)``.

    The target is the clean top-1 expert (``soft_targets=False``, the paper's ``r(x)``) or the clean router
    probabilities (``soft_targets=True``: the cross-entropy then equals ``KL(R(x) ‖ R(x + δ))`` plus the clean
    entropy, so its minimum does not reward sharper routing). Averaged over routing units (tokens, frames or the clip)
    and then over MoE layers. Attacks maximise it to flip routing decisions; J-TLAT's router step minimises it.
    """
    adv = check_router_logits(adv_router_logits, "router_consistency_ce")
    clean = check_router_logits(clean_router_logits, "router_consistency_ce")
    per_layer = []
    for adv_logits, clean_logits in zip(adv, clean):
        log_probs = adv_logits.float().log_softmax(dim=-1)
        if soft_targets:
            target_probs = clean_logits.detach().float().softmax(dim=-1)  # (B, U, E)
            per_unit = -(target_probs * log_probs).sum(dim=-1)
        else:
            target = clean_logits.detach().argmax(dim=-1)  # (B, U)
            per_unit = -log_probs.gather(-1, target[..., None]).squeeze(-1)
        per_layer.append(per_unit.mean(dim=1))
    return torch.stack(per_layer).mean(dim=0)


def guidance_ce(adv_router_logits: Sequence[torch.Tensor], target_expert: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the adversarial router toward ``target_expert`` (one expert per sample, ``(batch,)`` long),
    over every routing unit and MoE layer, ``(batch,)``. TLGA-R *subtracts* it, steering routing toward the target."""
    adv = check_router_logits(adv_router_logits, "guidance_ce")
    target_expert = target_expert.long()
    per_layer = []
    for logits in adv:
        log_probs = logits.float().log_softmax(dim=-1)  # (B, U, E)
        index = target_expert.to(log_probs.device)[:, None, None].expand(-1, log_probs.shape[1], 1)
        per_layer.append(-log_probs.gather(-1, index).squeeze(-1).mean(dim=1))
    return torch.stack(per_layer).mean(dim=0)


def weakest_expert(clean_router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per clip, the expert with the lowest clean router probability (mean over units and layers): ``(batch,)`` long.

    This is TLGA-R's guidance target ŷ_R.
    """
    return clip_router_probabilities(check_router_logits(clean_router_logits, "weakest_expert")).argmin(dim=-1)


def dominant_expert(clean_router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per clip, the clean top-1 expert at clip level (argmax of the mean router probabilities): ``(batch,)`` long.

    TLA-E attacks this expert, E_i(x) with i = ``dominant_expert``.
    """
    return clip_router_probabilities(check_router_logits(clean_router_logits, "dominant_expert")).argmax(dim=-1)


def stack_router_layers(router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer router logits into ``(batch, layers, units, experts)`` float32 (all MoE layers of a model share
    the routing granularity, hence the number of units)."""
    if len({tuple(r.shape) for r in router_logits}) != 1:
        raise ValueError(
            "Router objectives need the same number of routing units in every MoE layer, got shapes "
            f"{[tuple(r.shape) for r in router_logits]}."
        )
    return torch.stack([r.float() for r in router_logits], dim=1)
