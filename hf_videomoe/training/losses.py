"""Per-sample losses of the adversarial trainers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "split_router_logits"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample cross-entropy in float32, ``(batch,)``."""
    return F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)


def split_router_logits(
    router_logits: Iterable[torch.Tensor], first: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Split router logits of a concatenated ``[clean, adversarial]`` batch into the two halves."""
    router_logits = tuple(router_logits)
    return tuple(r[:first] for r in router_logits), tuple(r[first:] for r in router_logits)
