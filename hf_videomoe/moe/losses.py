"""The MoE auxiliary losses: Switch load balancing, its sharpened variant (J-TLAT's step 1) and the ST-MoE z-loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["compute_aux_loss", "load_balancing_loss", "router_z_loss", "sharpened_balance_loss"]


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-Transformer load-balancing loss, averaged over MoE layers.

    For each layer: ``num_experts * sum_e f_e * P_e`` where ``f_e`` is the fraction of routing slots (unit x top-k)
    assigned to expert ``e`` and ``P_e`` the mean router probability of ``e``. Equals 1 for perfectly uniform routing.
    """
    losses = []
    for logits in router_logits:
        probs = logits.float().reshape(-1, num_experts).softmax(dim=-1)
        selected = torch.topk(probs, top_k, dim=-1).indices
        tokens_per_expert = F.one_hot(selected, num_experts).float().mean(dim=(0, 1))
        losses.append(num_experts * (tokens_per_expert * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def sharpened_balance_loss(
    router_logits: tuple[torch.Tensor, ...], num_experts: int, temperature: float = 0.1
) -> torch.Tensor:
    """A load-balancing loss on the *assignments*, averaged over MoE layers: ``num_experts * sum_e q_e ** 2`` with
    ``q_e`` the mean over routing units of ``softmax(logits / temperature)_e``, a differentiable stand-in for the
    fraction of units whose top-1 expert is ``e``. 1 when the assignments are balanced, ``num_experts`` when one expert
    takes every unit.

    Why not the Switch loss: ``num_experts * sum_e f_e * P_e`` is already close to 1 when every unit goes to one
    expert but the router probabilities are nearly uniform (``P_e ≈ 1 / num_experts``), so it flattens the
    probabilities without spreading the decisions; a router that favours one expert by a small common offset on every
    unit (collapse) then pays almost nothing. With a small ``temperature`` the decisions themselves are penalised.
    """
    losses = []
    for logits in router_logits:
        assignments = (logits.float().reshape(-1, num_experts) / temperature).softmax(dim=-1).mean(dim=0)
        losses.append(num_experts * assignments.pow(2).sum())
    return torch.stack(losses).mean()


def router_z_loss(router_logits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """ST-MoE router z-loss: mean squared log-partition of the router logits, averaged over layers."""
    return torch.stack([torch.logsumexp(logits.float(), dim=-1).pow(2).mean() for logits in router_logits]).mean()


def compute_aux_loss(router_logits: tuple[torch.Tensor, ...], config) -> torch.Tensor | None:
    """The weighted auxiliary loss a model adds to its task loss: ``aux_coef * balance + z_coef * z``."""
    if not router_logits:
        return None
    aux = router_logits[0].new_zeros(())
    if config.router_aux_loss_coef:
        aux = aux + config.router_aux_loss_coef * load_balancing_loss(
            router_logits, config.num_experts, config.num_experts_per_tok
        )
    if config.router_z_loss_coef:
        aux = aux + config.router_z_loss_coef * router_z_loss(router_logits)
    return aux
