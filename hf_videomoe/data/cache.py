"""Decode once, read many times: a memory-mapped Arrow cache of decoded clips.

Decoding H.264 dominates a video epoch on CPU workers (docs/BENCHMARKS.md, "Data loading"). With deterministic
sampling (uniform, or segment middles) every epoch decodes the same frames, so they can be stored once: as uint8,
which loses nothing, because `read_video` rounds its resize to 8-bit levels. The cache lives in a folder named after a
hash of everything that decides the pixels (the files, their sizes and modification times, the labels, the sampling,
the resize settings and `PREPROCESSING_VERSION`), so changing any of them builds a new one instead of reading stale
frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .decode import VideoDecodeTransform

PREPROCESSING_VERSION = 2
"""Bumped whenever `read_video` would produce other pixels from the same file and settings (2: transformers'
sampling and resize-then-crop)."""


def _decode_transform(dataset) -> VideoDecodeTransform:
    fmt = getattr(dataset, "format", None) or {}
    transform = fmt.get("format_kwargs", {}).get("transform") if fmt.get("type") == "custom" else None
    if not isinstance(transform, VideoDecodeTransform):
        raise TypeError(
            "cache_decoded_videos takes a dataset that decodes videos on access, as `load_video_folder` or "
            f"`decode_video_dataset` return (got a {type(dataset).__name__} with format {fmt.get('type')!r})."
        )
    if transform.train and transform.sampling != "uniform":
        raise ValueError(
            f"This split samples frames at random ({transform.sampling!r}, training split): every epoch decodes other "
            "frames, so a cache would freeze one draw. Cache evaluation splits, or use sampling='uniform'."
        )
    return transform


def _cache_key(dataset, transform: VideoDecodeTransform) -> str:
    settings = {
        "version": PREPROCESSING_VERSION,
        "num_frames": transform.num_frames,
        "image_size": transform.image_size,
        "shortest_edge": transform.shortest_edge or transform.image_size,  # None means image_size: one cache
        "resample": transform.resample,
        "sampling": transform.sampling,
        "seed": transform.seed,
        "rows": dataset._fingerprint,
    }
    if transform.videos is not None:
        stats = [os.stat(video) for video in transform.videos]
        settings["files"] = [[video, stat.st_size, stat.st_mtime_ns] for video, stat in zip(transform.videos, stats)]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cache_decoded_videos(dataset, cache_dir: str | os.PathLike, batch_size: int = 8, progress: bool = True):
    """Decode every clip of ``dataset`` once into a memory-mapped Arrow table, or reuse the table a previous call made.

    Args:
        dataset (`datasets.Dataset`): A split that decodes videos on access (`load_video_folder`,
            `decode_video_dataset`) with deterministic frame sampling.
        cache_dir (`str` or `os.PathLike`): Parent folder of the caches; each set of files and settings gets its own
            sub-folder, written atomically (a temporary folder renamed into place). Building needs about twice the
            cache's size on disk for a moment (the generated table and its saved copy); under several processes,
            build it in the main process first (`TrainingArguments.main_process_first`, as `hf-videomoe train` does).
        batch_size (`int`, *optional*, defaults to 8): Clips decoded at a time while building.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar while building.

    Returns:
        `datasets.Dataset`: ``pixel_values`` (uint8 ``(frames, 3, image_size, image_size)``, numpy format; the
        collator and the evaluator scale them by 1/255, giving exactly the decoded float pixels) and ``labels``.
    """
    from datasets import Array4D, Dataset, Features, load_from_disk

    transform = _decode_transform(dataset)
    target = Path(cache_dir) / f"decoded-{_cache_key(dataset, transform)}"
    if not target.is_dir():
        shape = (transform.num_frames, 3, transform.image_size, transform.image_size)
        label_feature = next((dataset.features[k] for k in ("labels", "label") if k in dataset.features), None)
        features = {"pixel_values": Array4D(shape=shape, dtype="uint8")}
        if label_feature is not None:
            features["labels"] = label_feature

        def rows():
            from tqdm.auto import tqdm

            starts = range(0, len(dataset), batch_size)
            for start in tqdm(starts, desc="Decoding once", unit="batch", disable=not progress):
                batch = dataset[start : start + batch_size]
                for index, clip in enumerate(batch["pixel_values"]):
                    row = {"pixel_values": clip.mul(255).round_().to(torch.uint8).numpy()}
                    if label_feature is not None:
                        row["labels"] = int(batch["labels"][index])
                    yield row

        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as building:
            table = Dataset.from_generator(rows, features=Features(features), cache_dir=building, split=dataset.split)
            table.save_to_disk(Path(building) / "table")
            del table
            try:
                os.replace(Path(building) / "table", target)
            except OSError:  # another process finished the same cache first: use theirs
                if not target.is_dir():
                    raise
                shutil.rmtree(Path(building) / "table", ignore_errors=True)
    # datasets' numpy / torch formatters widen integer arrays to int64 unless told the dtype: keep the frames 8-bit.
    return load_from_disk(str(target)).with_format(
        "numpy", columns=["pixel_values"], dtype=np.uint8, output_all_columns=True
    )
