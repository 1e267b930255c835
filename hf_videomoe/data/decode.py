"""Decoding video rows of `datasets` tables into model inputs: the transform behind `load_video_folder`, and
`decode_video_dataset` for any table whose rows name a video (a path column, or a ``datasets.Video`` feature as
``load_dataset("videofolder", ...)`` builds).

Decoding happens on access (`Dataset.set_transform`) or while iterating (`IterableDataset.map`), so memory does not
grow with the number of videos. Every path decodes with [`read_video`], the one definition of sampling, resize, crop
and rescale that the processors saved with our checkpoints share.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .video_io import RESAMPLE_CODES, SAMPLING_MODES, SamplingMode, VideoDecodeError, read_video

LABEL_COLUMNS = ("labels", "label")
"""Label column names understood everywhere (transformers' ``labels`` first, the `datasets` convention ``label``)."""


def _video_source(value: Any):
    """A path, or the encoded bytes, of a row's video (a string, or a ``Video(decode=False)`` dict)."""
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return value["path"]
        raise ValueError(f"A video row has neither 'bytes' nor 'path': keys {sorted(value)}.")
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        return value
    raise TypeError(
        f"Cannot decode a video given as {type(value).__name__}; expected a path, bytes, or a Video(decode=False) row. "
        "Cast the column with `dataset.cast_column('video', datasets.Video(decode=False))`."
    )


def _video_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("path") or "<bytes>")
    return "<bytes>" if isinstance(value, bytes) else str(value)


@dataclass
class VideoDecodeTransform:
    """Batch transform that turns a video column into ``pixel_values`` (and a ``label`` column into ``labels``).

    Output per example: ``pixel_values`` (float32 ``(num_frames, 3, image_size, image_size)`` in ``[0, 1]``, decoded
    by [`read_video`]) and ``labels`` (`int`) when the batch has ``labels`` or ``label``.

    With `videos` / `labels` given (the whole split, as `load_video_folder` does), a video that fails to decode is
    replaced by the next decodable one of the split with a warning unless `strict`; without them, or when `strict`, a
    failure raises `ValueError` naming the file.

    Random sampling in the training split uses a generator seeded with `seed` (and, inside DataLoader workers, with
    the worker's seed, so that workers and epochs draw different frames). Evaluation splits are deterministic:
    `"random"` sampling seeds a generator per video.
    """

    num_frames: int
    image_size: int
    sampling: SamplingMode = "uniform"
    train: bool = False
    strict: bool = False
    seed: int = 0
    shortest_edge: int | None = None
    resample: str = "bilinear"
    video_column: str = "video"
    videos: list[str] | None = None
    labels: list[int] | None = None
    _positions: dict[str, int] = field(init=False, repr=False, default_factory=dict)
    _undecodable: set[str] = field(init=False, repr=False, default_factory=set)
    _rng: np.random.Generator | None = field(init=False, repr=False, default=None)
    _rng_key: int | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"`sampling` must be one of {SAMPLING_MODES}, got {self.sampling!r}.")
        if self.videos is not None:
            self._positions = {video: position for position, video in enumerate(self.videos)}

    def _generator(self, position: int) -> np.random.Generator:
        if not self.train:
            return np.random.default_rng([self.seed, position])
        worker = torch.utils.data.get_worker_info()
        key = None if worker is None else worker.seed
        if self._rng is None or key != self._rng_key:
            entropy = [self.seed] if worker is None else [self.seed, worker.seed % 2**32]
            self._rng, self._rng_key = np.random.default_rng(entropy), key
        return self._rng

    def _decode(self, video: Any, position: int) -> torch.Tensor:
        return read_video(
            _video_source(video),
            self.num_frames,
            self.image_size,
            self.sampling,
            rng=self._generator(position),
            train=self.train,
            shortest_edge=self.shortest_edge,
            resample=self.resample,
        )

    def _skip(self, video: str, error: Exception) -> None:
        self._undecodable.add(video)
        warnings.warn(
            f"Could not decode {video} ({error}); substituting the next decodable video "
            f"({len(self._undecodable)} of {len(self.videos)} videos skipped so far)."
        )

    def _load(self, video: Any, label: int | None) -> tuple[torch.Tensor, int | None]:
        name = _video_name(video)
        # Without the split's list, a stable digest of the name seeds the video's own evaluation-time sampling.
        position = self._positions.get(name, zlib.crc32(name.encode()))
        if name not in self._undecodable:
            try:
                return self._decode(video, position), label
            except VideoDecodeError as error:
                if self.strict or self.videos is None:
                    raise ValueError(f"Could not decode video {name}: {error}") from error
                self._skip(name, error)
        for step in range(1, len(self.videos)):
            candidate = (position + step) % len(self.videos)
            substitute = self.videos[candidate]
            if substitute in self._undecodable:
                continue
            try:
                return self._decode(substitute, candidate), self.labels[candidate]
            except VideoDecodeError as error:
                self._skip(substitute, error)
        raise ValueError(f"No video of this dataset could be decoded (last tried: {name}).")

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.video_column not in batch:
            raise KeyError(
                f"The {self.video_column!r} column is missing, so frames cannot be decoded (columns: {sorted(batch)}). "
                "If this dataset goes through `transformers.Trainer`, pass "
                "`TrainingArguments(remove_unused_columns=False)`."
            )
        label_key = next((key for key in LABEL_COLUMNS if key in batch), None)
        labels = batch[label_key] if label_key else [None] * len(batch[self.video_column])
        pixel_values, out_labels = [], []
        for video, label in zip(batch[self.video_column], labels):
            clip, label = self._load(video, label)
            pixel_values.append(clip)
            out_labels.append(label)
        output = {"pixel_values": pixel_values}
        if label_key:
            output["labels"] = out_labels
        return output


def decode_video_dataset(
    dataset,
    num_frames: int,
    image_size: int,
    video_column: str = "video",
    sampling: SamplingMode = "uniform",
    train: bool = False,
    seed: int = 0,
    shortest_edge: int | None = None,
    resample: str = "bilinear",
):
    """Make a `datasets` table of videos yield ``pixel_values`` and ``labels``, decoded with [`read_video`].

    Works on a `Dataset` (decoding on access, via `set_transform` on a copy), a `DatasetDict` (every split; the
    ``train`` split samples at random for the random modes) and an `IterableDataset` or streaming dataset (decoding
    while iterating, via `map`). The video column may hold paths, or a ``datasets.Video`` feature, which is cast to
    ``Video(decode=False)`` so that our reader, not torchcodec, decodes the file. A ``label`` column comes out as
    ``labels``.

    Example:

    ```python
    from datasets import load_dataset
    from hf_videomoe.data import decode_video_dataset

    videos = load_dataset("videofolder", data_dir="my_videos")      # columns: video (Video), label (ClassLabel)
    videos = decode_video_dataset(videos, num_frames=16, image_size=224)
    videos["train"][0]["pixel_values"].shape                          # (16, 3, 224, 224)
    ```

    Returns:
        The same kind of dataset, yielding ``pixel_values`` and ``labels``.
    """
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(dataset)(
            {
                name: decode_video_dataset(
                    split,
                    num_frames,
                    image_size,
                    video_column,
                    sampling,
                    train=name == "train",
                    seed=seed,
                    shortest_edge=shortest_edge,
                    resample=resample,
                )
                for name, split in dataset.items()
            }
        )
    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        raise TypeError(f"Expected a datasets.Dataset, DatasetDict or IterableDataset, got {type(dataset).__name__}.")
    features = dataset.features or {}
    columns = list(features) if features else list(getattr(dataset, "column_names", None) or [])
    if columns and video_column not in columns:
        raise ValueError(f"The dataset has no {video_column!r} column to decode (columns: {columns}).")
    if isinstance(features.get(video_column), datasets.Video) and features[video_column].decode:
        dataset = dataset.cast_column(video_column, datasets.Video(decode=False))
    if "label" in columns and "labels" not in columns:  # transformers' name, so `features["labels"]` works too
        dataset = dataset.rename_column("label", "labels")
        columns = [("labels" if c == "label" else c) for c in columns]
    transform = VideoDecodeTransform(
        num_frames,
        image_size,
        sampling,
        train=train,
        strict=True,
        seed=seed,
        shortest_edge=shortest_edge,
        resample=resample,
        video_column=video_column,
    )
    if isinstance(dataset, datasets.IterableDataset):
        drop = [c for c in columns if c != "labels"] if columns else [video_column]
        return dataset.map(transform, batched=True, batch_size=8, remove_columns=drop)
    dataset = dataset.with_transform(transform)
    return dataset


def has_undecoded_videos(dataset, video_column: str = "video") -> bool:
    """Whether ``dataset`` is a `datasets` table whose rows name videos but that yields no ``pixel_values`` yet."""
    import datasets

    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        return False
    if isinstance(dataset, datasets.Dataset) and (dataset.format or {}).get("type") == "custom":
        return False  # a transform already turns rows into model inputs
    columns = list(dataset.features or {}) or list(getattr(dataset, "column_names", None) or [])
    return video_column in columns and "pixel_values" not in columns


def decode_for_model(dataset, model):
    """``dataset`` ready for ``model``: a table of undecoded videos (see `has_undecoded_videos`) is decoded with the
    model's ``num_frames`` and ``image_size`` and its checkpoint processor's resize; anything else is returned as is."""
    if not has_undecoded_videos(dataset):
        return dataset
    return decode_video_dataset(dataset, **model_geometry(model))


def model_geometry(model, processor="model") -> dict:
    """How videos are decoded for ``model``: its ``num_frames`` and ``image_size`` and the resize of ``processor``
    (``"model"``: the processor the model carries, ``model.image_processor``; ``None``: the default resize), as keyword
    arguments of [`decode_video_dataset`] / `load_video_folder`. A wrapper such as `NormalizedModel` is looked
    through."""
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    if config is None or not hasattr(config, "num_frames"):
        raise ValueError("Cannot decode the dataset's videos for a model without `config.num_frames`; decode it first.")
    size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)[0]
    processor = getattr(model, "image_processor", None) if isinstance(processor, str) else processor
    return {"num_frames": int(config.num_frames), "image_size": size, **decode_settings(processor)}


def decode_settings(processor) -> dict:
    """Keyword arguments of [`read_video`] / `load_video_folder` / [`decode_video_dataset`] (``shortest_edge``,
    ``resample``) that reproduce a checkpoint processor's resize, e.g.
    ``load_video_folder(path, 16, 224, **decode_settings(AutoImageProcessor.from_pretrained(checkpoint)))``."""
    if processor is None:
        return {}
    size = getattr(processor, "size", None)
    edge = size.get("shortest_edge") if isinstance(size, Mapping) else getattr(size, "shortest_edge", None)
    resample = RESAMPLE_CODES.get(getattr(processor, "resample", 2))
    if edge is None or resample is None:
        raise ValueError(
            "The library's decode implements a shortest-edge resize, bilinear or bicubic; the processor has "
            f"size={size!r}, resample={getattr(processor, 'resample', None)!r}."
        )
    return {"shortest_edge": int(edge), "resample": resample}
