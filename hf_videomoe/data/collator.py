"""Batching of video clips for `transformers.Trainer` and plain `torch.utils.data.DataLoader`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch


def to_unit_float(pixels: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Convert pixels to float32 in ``[0, 1]``: uint8 values are divided by 255, floats are only cast.

    Args:
        pixels (`torch.Tensor` or `np.ndarray`): Any shape.

    Returns:
        The same container type (tensor or array), float32.
    """
    if isinstance(pixels, torch.Tensor):
        return pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.float()
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels.astype(np.float32, copy=False)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value))


def _label(value: Any, index: int) -> int:
    label = _as_tensor(value)
    if label.numel() != 1 or label.is_floating_point() or label.is_complex():
        raise ValueError(f"Example {index} has labels {value!r}; expected a single integer class id.")
    return int(label.item())


@dataclass
class VideoCollator:
    """Stack video examples into a batch; usable as `Trainer(data_collator=VideoCollator())`.

    Each example is a mapping with ``pixel_values`` of shape ``(frames, channels, height, width)`` (tensor, numpy
    array or nested lists; float in ``[0, 1]`` or uint8) and optionally ``labels`` (int or scalar tensor). The
    batch has ``pixel_values`` as float32 ``(batch, frames, channels, height, width)`` in ``[0, 1]`` and
    ``labels`` as int64 ``(batch,)``; other keys are dropped.

    For datasets that decode frames in a transform (e.g. [`load_video_folder`], whose raw column is ``video``),
    `Trainer` must keep the raw columns: pass `TrainingArguments(remove_unused_columns=False)`.

    Args:
        num_frames (`int`, *optional*): If set, the expected number of frames.
        image_size (`int`, *optional*): If set, the expected height and width.
        num_channels (`int`, *optional*, defaults to 3): The expected number of channels (`None` to skip).

    Raises:
        ValueError: On an empty batch, a missing ``pixel_values``, wrong rank, examples of different shapes, an
            unexpected frame count / size / channel count, float values outside ``[0, 1]`` or labels given for
            only some examples.
    """

    num_frames: int | None = None
    image_size: int | None = None
    num_channels: int | None = 3

    def _expected_shape(self) -> tuple[int | None, ...]:
        return (self.num_frames, self.num_channels, self.image_size, self.image_size)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("Cannot collate an empty list of examples.")
        clips = []
        for index, example in enumerate(features):
            if "pixel_values" not in example:
                raise ValueError(f"Example {index} has no 'pixel_values'; keys: {sorted(example)}.")
            clip = _as_tensor(example["pixel_values"])
            if clip.ndim != 4:
                raise ValueError(
                    f"Example {index} has pixel_values of shape {tuple(clip.shape)}; expected 4 dimensions "
                    "(frames, channels, height, width)."
                )
            clips.append(clip)

        reference = tuple(clips[0].shape)
        for index, clip in enumerate(clips):
            if tuple(clip.shape) != reference:
                raise ValueError(
                    f"All clips in a batch must have the same shape; example 0 has {reference} but example {index} "
                    f"has {tuple(clip.shape)} (frames, channels, height, width)."
                )
        expected = self._expected_shape()
        if any(want is not None and want != got for want, got in zip(expected, reference)):
            shown = ", ".join("*" if want is None else str(want) for want in expected)
            raise ValueError(f"Expected clips of shape ({shown}) (frames, channels, height, width), got {reference}.")

        pixel_values = to_unit_float(torch.stack(clips))
        if clips[0].dtype != torch.uint8 and pixel_values.numel():
            low, high = pixel_values.min().item(), pixel_values.max().item()
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"Float pixel_values must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; scale uint8-range "
                    "floats by 1/255."
                )
        batch = {"pixel_values": pixel_values}

        has_labels = ["labels" in example and example["labels"] is not None for example in features]
        if any(has_labels):
            if not all(has_labels):
                raise ValueError("Some examples have 'labels' and others do not.")
            batch["labels"] = torch.tensor(
                [_label(example["labels"], index) for index, example in enumerate(features)], dtype=torch.long
            )
        return batch
