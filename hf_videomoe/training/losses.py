"""Per-sample losses of the adversarial trainers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..moe import expert_usage_entropy
from .phases import ForwardOutput, PhaseLoss

__all__ = ["cross_entropy", "split_router_logits", "with_aux_loss"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample cross-entropy in float32, ``(batch,)``."""
    return F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)


def with_aux_loss(loss: PhaseLoss, out: ForwardOutput, top_k: int) -> PhaseLoss:
    """Add the model's (already weighted) MoE auxiliary loss of ``out`` to ``loss``, and record the expert-usage
    entropy of its router logits (``top_k`` experts per token)."""
    if out.aux_loss is not None:
        # `.mean()`: DataParallel returns one aux loss per replica.
        loss.per_sample = loss.per_sample + out.aux_loss.float().mean()
        loss.terms["aux_loss"] = out.aux_loss
    if out.router_logits:
        loss.terms["expert_usage_entropy"] = expert_usage_entropy(out.router_logits, top_k)
    return loss


def split_router_logits(
    router_logits: Iterable[torch.Tensor], first: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Split router logits of a concatenated ``[clean, adversarial]`` batch into the two halves."""
    router_logits = tuple(router_logits)
    return tuple(r[:first] for r in router_logits), tuple(r[first:] for r in router_logits)
