"""TRADES' inner maximisation (Zhang et al., 2019): PGD on the KL divergence between clean and adversarial outputs,
used by the TRADES trainer."""

from __future__ import annotations

import torch
from torch import nn

from .model_guard import attack_mode
from .threat_model import project

__all__ = ["kl_divergence", "trades_adversarial"]


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(softmax(p) ‖ softmax(q))``, ``(batch,)`` in float32 (TRADES: p clean, q adversarial)."""
    p_log = p_logits.float().log_softmax(dim=-1)
    q_log = q_logits.float().log_softmax(dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1)


def trades_adversarial(
    model: nn.Module,
    pixel_values: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None,
    norm: str,
    seed: int,
    logits_fn,
) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on ``KL(f(x) ‖ f(x'))`` from ``x + 0.001·N(0, I)`` (Zhang et al., 2019).

    ``model`` is run in eval mode with frozen parameters (restored afterwards); ``logits_fn(model, x)`` returns the
    logits. Returns the adversarial pixels (detached, inside the ε-ball and [0, 1]).
    """
    x = pixel_values.detach()
    if steps == 0 or eps == 0:
        return x.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with attack_mode(model, grad=True):
        with torch.no_grad():
            clean_logits = logits_fn(model, x)
        delta = project(0.001 * noise, x, eps, norm, (0.0, 1.0))
        for _ in range(steps):
            x_adv = (x + delta).requires_grad_(True)
            loss = kl_divergence(clean_logits, logits_fn(model, x_adv)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            if norm == "linf":
                direction = grad.sign()
            else:
                flat = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-12)
                direction = grad / flat.reshape(-1, *([1] * (grad.ndim - 1)))
            delta = project(delta + step_size * direction, x, eps, norm, (0.0, 1.0)).detach()
    return (x + delta).clamp(0.0, 1.0).detach()
