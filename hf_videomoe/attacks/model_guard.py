"""The model guard attacks run under, and wrappers that give every model the same pixel interface."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from ..models.common import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["NormalizedModel", "attack_mode", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` wrappers: attacks need no gradient synchronisation, and a
    DDP forward whose parameters get no gradient would break the next training step."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


@contextlib.contextmanager
def attack_mode(model: nn.Module, grad: bool = True):
    """Run ``model`` in eval mode with its parameters frozen, and gradients enabled (``grad=True``) even under
    ``torch.no_grad()`` / ``torch.inference_mode()``.

    On exit (also after an exception) every submodule's ``training`` flag and every parameter's ``requires_grad`` flag
    are restored; since parameters do not require grad inside, no ``.grad`` is created or accumulated.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            yield model
    finally:
        for m, flag in zip(modules, training):
            m.training = flag
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)


class NormalizedModel(nn.Module):
    """Wrap a model that expects normalised inputs (e.g. transformers' ``VideoMAEForVideoClassification``) so that it
    takes pixels in [0, 1], ``(batch, frames, channels, height, width)``, like the MoE models of this library — then
    ε means the same pixel budget for the dense baseline and the MoE model.

    Args:
        model: the wrapped classifier; called as ``model(pixel_values=normalised)``.
        mean, std: per-channel statistics (defaults: ``model.config.image_mean`` / ``image_std`` if present, else
            ImageNet's).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        config = getattr(model, "config", None)
        mean = mean if mean is not None else getattr(config, "image_mean", None) or IMAGENET_MEAN
        std = std if std is not None else getattr(config, "image_std", None) or IMAGENET_STD
        self.model = model
        self.config = config
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        return self.model(pixel_values=(pixel_values - self.mean) / self.std, **kwargs)
