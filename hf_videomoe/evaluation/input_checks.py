"""Checks of the evaluation data against the model, before any attack runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.sources import DataSource, sample_shape

__all__ = ["check_labels", "check_model_input"]


def _config_value(config, name):
    value = getattr(config, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0]
    return value


def check_model_input(model: nn.Module, source: DataSource) -> None:
    """A clear `ValueError` when the dataset's clips do not have the shape the model's config expects."""
    config = getattr(model, "config", None)
    first = source.first_sample()
    shape = sample_shape(first)
    if len(shape) != 4:
        raise ValueError(f"Each sample's pixel_values must be (frames, channels, height, width), got shape {shape}.")
    if config is None:
        return
    frames, channels, size = (_config_value(config, k) for k in ("num_frames", "num_channels", "image_size"))
    if None in (frames, channels, size):
        return
    expected = (frames, channels, size, size)
    if tuple(shape) != expected:
        raise ValueError(
            f"Model/data mismatch: the dataset's pixel_values have shape (frames, channels, height, width) = {shape}, "
            f"but {type(model).__name__} expects {expected} (config.num_frames={frames}, num_channels={channels}, "
            f"image_size={size}). Resample / resize the clips (e.g. make_moving_shapes(num_frames={frames}, "
            f"image_size={size})) or evaluate a model built for this data."
        )


def check_labels(labels: Sequence[int] | torch.Tensor, num_labels: int | None) -> None:
    """A clear `ValueError` when a label is not a class index of the model."""
    if num_labels is None:
        return
    values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    bad = [v for v in values if not 0 <= int(v) < num_labels]
    if bad:
        raise ValueError(
            f"Labels must be class indices in [0, {num_labels}) for this model (config.num_labels={num_labels}), "
            f"found {sorted(set(bad))[:10]}."
        )
