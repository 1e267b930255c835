"""The model guard attacks run under, and wrappers that give every model the same pixel interface."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..models.common import IMAGENET_MEAN, IMAGENET_STD, looks_like_local_path
from ..moe import is_moe_model

__all__ = ["NormalizedModel", "attack_mode", "pixel_space_model", "processor_normalization", "unwrap_model"]

#: Processor configs a checkpoint may carry, in the order they are read (the video processor is what
#: ``pipeline("video-classification")`` uses where torchvision is installed; the image processor is its fallback).
PROCESSOR_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


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


def processor_normalization(path: str | os.PathLike) -> tuple[list[float], list[float]] | None:
    """The ``(mean, std)`` the processor saved with the checkpoint ``path`` normalises pixels with, or ``None``
    when it does not normalise (``do_normalize`` false, identity statistics) or there is no processor config.

    ``path``: a checkpoint folder, or a Hub id whose files are in the local Hub cache (as after ``from_pretrained``;
    nothing is downloaded here)."""
    for name in PROCESSOR_CONFIG_FILES:
        file = Path(path) / name
        if not file.is_file() and not Path(path).is_dir() and not looks_like_local_path(os.fspath(path)):
            from huggingface_hub import try_to_load_from_cache

            try:
                cached = try_to_load_from_cache(os.fspath(path), name)
            except ValueError:  # not a valid repo id either
                cached = None
            file = Path(cached) if isinstance(cached, str) else file
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{file} is not valid JSON ({err}).") from err
        mean, std = config.get("image_mean"), config.get("image_std")
        # transformers' processors normalise unless told not to (``do_normalize`` defaults to true).
        if not config.get("do_normalize", True) or mean is None or std is None:
            return None
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
            return None
        return mean, std
    return None


def pixel_space_model(model: nn.Module, path: str | os.PathLike | None = None) -> nn.Module:
    """``model`` as a classifier of pixels in [0, 1], the space attacks and the evaluator work in.

    MoE models of this library normalise inside ``forward`` and are returned as they are, and so is a dense model
    whose checkpoint ``path`` has no normalising processor (it was trained on [0, 1] pixels, as the demo's). A dense
    model whose processor normalises (e.g. a Hub VideoMAE with ImageNet statistics) is wrapped in
    [`NormalizedModel`] with the processor's mean and std, so it sees what its processor would feed it.
    """
    if is_moe_model(model) or isinstance(model, NormalizedModel) or path is None:
        return model
    stats = processor_normalization(path)
    if stats is None:
        return model
    return NormalizedModel(model, mean=stats[0], std=stats[1])


def model_outputs(model: nn.Module, pixel_values: torch.Tensor, router: bool = False, moe: bool | None = None):
    """Run ``model`` on ``pixel_values`` and return ``(logits, router_logits)``.

    Works for the MoE classifiers of this library (``router_logits`` is a tuple, one tensor per MoE layer), for
    transformers classifiers (``router_logits`` is ``None``) and for plain modules returning a logits tensor.
    ``router=True`` asks an MoE model for its router logits even when ``config.output_router_logits`` is off
    (``moe``: whether the model is an MoE model, if the caller already knows; looked up otherwise).
    """
    if router and (is_moe_model(model) if moe is None else moe):
        out = model(pixel_values, output_router_logits=True)
    else:
        out = model(pixel_values)
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, dict) or hasattr(out, "logits"):
        logits = out["logits"] if isinstance(out, dict) else out.logits
        router_logits = out.get("router_logits") if isinstance(out, dict) else getattr(out, "router_logits", None)
        return logits, router_logits
    if isinstance(out, (tuple, list)):
        return out[0], None
    raise TypeError(
        f"Cannot read logits from a model output of type {type(out).__name__}; return a tensor or an "
        "object with a `logits` attribute."
    )
