"""Batching of video clips for `transformers.Trainer` and plain `torch.utils.data.DataLoader`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .decode import LABEL_COLUMNS


def to_unit_float(pixels: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Convert pixels to float32 in ``[0, 1]``: 8-bit values (uint8, or integers in ``[0, 255]`` as `datasets` returns
    uint8 frames through its python format) are divided by 255 as transformers' processors rescale them; floats are
    only cast.

    Args:
        pixels (`torch.Tensor` or `np.ndarray`): Any shape.

    Returns:
        The same container type (tensor or array), float32.
    """
    if isinstance(pixels, torch.Tensor):
        if pixels.is_floating_point():
            return pixels.float()
        _check_8bit(pixels.min().item() if pixels.numel() else 0, pixels.max().item() if pixels.numel() else 0)
        return pixels.float().div_(255.0)
    pixels = np.asarray(pixels)
    if pixels.dtype.kind == "f":
        return pixels.astype(np.float32, copy=False)
    if pixels.dtype.kind not in "iu":
        raise TypeError(f"pixel_values must be numbers, got dtype {pixels.dtype}.")
    _check_8bit(pixels.min() if pixels.size else 0, pixels.max() if pixels.size else 0)
    return pixels.astype(np.float32) / np.float32(255.0)


def _check_8bit(low, high) -> None:
    if low < 0 or high > 255:
        raise ValueError(f"Integer pixel_values must be 8-bit frames in [0, 255], got values in [{low}, {high}].")


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
    array or nested lists; float in ``[0, 1]``, or 8-bit integers scaled by 1/255) and optionally ``labels`` or
    ``label`` (an int). The batch has ``pixel_values`` as float32 ``(batch, frames, channels, height, width)`` in ``[0, 1]`` and
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
        if clips[0].is_floating_point() and pixel_values.numel():
            low, high = pixel_values.min().item(), pixel_values.max().item()
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"Float pixel_values must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; scale uint8-range "
                    "floats by 1/255."
                )
        batch = {"pixel_values": pixel_values}

        label_keys = [next((k for k in LABEL_COLUMNS if example.get(k) is not None), None) for example in features]
        if any(label_keys):
            if not all(label_keys):
                raise ValueError("Some examples have 'labels' (or 'label') and others do not.")
            batch["labels"] = torch.tensor(
                [_label(example[key], index) for index, (example, key) in enumerate(zip(features, label_keys))],
                dtype=torch.long,
            )
        return batch
