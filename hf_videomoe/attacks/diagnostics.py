"""MoE diagnostics: how much an attack moves the routing, how sensitive the routers are, how experts are used.

All functions run the model in eval mode without gradients and restore its mode; ``batch_size`` splits large inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..moe import expert_load, require_moe, router_probabilities, routing_change_per_layer
from .model_guard import attack_mode, model_outputs, unwrap_model
from .terms import LIPSCHITZ_EPS, per_sample_mse

__all__ = ["expert_usage", "router_lipschitz", "routing_change"]


def _unwrapped_moe(model: nn.Module, what: str):
    model = unwrap_model(model)
    return model, require_moe(model, what)


def _check_pair(clean: torch.Tensor, adv: torch.Tensor) -> None:
    for name, t in (("clean_pixels", clean), ("adv_pixels", adv)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"`{name}` must be a float tensor (batch, frames, channels, height, width).")
    if clean.shape != adv.shape:
        raise ValueError(f"`clean_pixels` {tuple(clean.shape)} and `adv_pixels` {tuple(adv.shape)} differ in shape.")


def _chunks(n: int, batch_size: int | None):
    step = n if not batch_size else int(batch_size)
    if step < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def _router_logits(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    device = next((p.device for p in model.parameters()), pixel_values.device)
    return tuple(model_outputs(model, pixel_values.to(device), router=True, moe=True)[1])


def routing_change(
    model: nn.Module, clean_pixels: torch.Tensor, adv_pixels: torch.Tensor, batch_size: int | None = None
) -> dict:
    """How much the routing decisions differ between clean and adversarial inputs.

    For each MoE layer and routing unit, the IoU of the selected top-k expert sets (clean vs adversarial);
    ``per_layer[l] = 1 - mean IoU`` over samples and units of layer ``l``, ``overall`` = the mean over layers. 0 means
    identical routing, 1 means every unit moved to disjoint experts. (With top-1 routing this is the fraction of units
    whose expert changed.)

    Returns:
        ``{"overall": float, "per_layer": list[float]}``.
    """
    model, blocks = _unwrapped_moe(model, "routing_change")
    _check_pair(clean_pixels, adv_pixels)
    sums = None
    count = 0
    with attack_mode(model, grad=False):
        for part in _chunks(clean_pixels.shape[0], batch_size):
            clean_rl = _router_logits(model, clean_pixels[part])
            adv_rl = _router_logits(model, adv_pixels[part])
            # sum over samples of per-sample means, per layer
            changes = routing_change_per_layer(clean_rl, adv_rl, [block.top_k for block in blocks]).sum(dim=0).tolist()
            sums = changes if sums is None else [s + c for s, c in zip(sums, changes)]
            count += clean_pixels[part].shape[0]
    if not count:
        return {"overall": 0.0, "per_layer": [0.0] * len(blocks)}
    per_layer = [s / count for s in sums]
    return {"overall": float(sum(per_layer) / len(per_layer)), "per_layer": per_layer}


def router_lipschitz(
    model: nn.Module, clean_pixels: torch.Tensor, adv_pixels: torch.Tensor, batch_size: int | None = None
) -> float:
    """Lips-R: the mean over samples of ``MSE(R(x), R(x_adv)) / MSE(x, x_adv)`` on router probabilities (all MoE
    layers and routing units, see [`~hf_videomoe.attacks.objectives.router_lipschitz_ratio`]).

    Samples whose adversarial clip equals the clean one carry no information on the ratio and are left out of the
    mean; 0.0 if no sample is perturbed.
    """
    model, _ = _unwrapped_moe(model, "router_lipschitz")
    _check_pair(clean_pixels, adv_pixels)
    total, count = 0.0, 0
    with attack_mode(model, grad=False):
        for part in _chunks(clean_pixels.shape[0], batch_size):
            clean, adv = clean_pixels[part], adv_pixels[part]
            device = next((p.device for p in model.parameters()), clean.device)
            clean, adv = clean.to(device), adv.to(device)
            clean_p = router_probabilities(_router_logits(model, clean))
            adv_p = router_probabilities(_router_logits(model, adv))
            numerator = torch.stack([per_sample_mse(c, a) for c, a in zip(clean_p, adv_p)]).mean(dim=0)
            denominator = per_sample_mse(clean, adv)
            moved = denominator > 0
            total += (numerator[moved] / (denominator[moved] + LIPSCHITZ_EPS)).sum().item()
            count += int(moved.sum())
    return total / count if count else 0.0


def expert_usage(model: nn.Module, pixel_values: torch.Tensor, batch_size: int | None = None) -> list[torch.Tensor]:
    """Fraction of routing slots (unit × top-k choice) sent to each expert, per MoE layer.

    Returns:
        one float tensor of shape ``(num_experts,)`` per MoE layer, summing to 1 (on the CPU).
    """
    model, blocks = _unwrapped_moe(model, "expert_usage")
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        raise TypeError("`pixel_values` must be a float tensor (batch, frames, channels, height, width).")
    counts = None
    with attack_mode(model, grad=False):
        for part in _chunks(pixel_values.shape[0], batch_size):
            router_logits = _router_logits(model, pixel_values[part])
            layer_counts = [expert_load(rl, block.top_k).cpu().double() for block, rl in zip(blocks, router_logits)]
            counts = layer_counts if counts is None else [c + n for c, n in zip(counts, layer_counts)]
    if counts is None:
        return [torch.zeros(block.num_experts) for block in blocks]
    return [(c / c.sum().clamp_min(1)).float() for c in counts]
