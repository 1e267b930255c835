"""Uniform batched access to labelled video data (the evaluator's, and calibration clips): ``datasets.Dataset``,
sequences of dicts, DataLoaders, iterables.

Every source is cut into the same global batches ``[k * batch_size, (k + 1) * batch_size)`` of sample indices, so a
batch has the same composition whatever the number of processes or whether the run was resumed. That is what makes a
sharded or resumed evaluation bit-identical to a single uninterrupted one.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .collator import to_unit_float

__all__ = [
    "Batch",
    "DataSource",
    "make_source",
    "sample_shape",
    "stack_pixel_values",
    "to_label_tensor",
    "to_pixel_tensor",
]

_LABEL_KEYS = ("labels", "label")


@dataclass
class Batch:
    """One global batch: its index, the dataset indices it covers, and (when loaded) its tensors."""

    index: int
    indices: list[int]
    pixel_values: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def _label_key(sample: Mapping) -> str:
    for key in _LABEL_KEYS:
        if key in sample:
            return key
    raise ValueError(
        f"The evaluation dataset has no labels: expected a 'labels' (or 'label') column next to 'pixel_values', got "
        f"columns {sorted(sample)}. Robust accuracy needs ground-truth labels."
    )


def _check_sample(sample: Any) -> None:
    if not isinstance(sample, Mapping):
        raise TypeError(
            f"Evaluation samples must be dicts with 'pixel_values' and 'labels', got {type(sample).__name__}. Pass a "
            "datasets.Dataset, a list of dicts, or a DataLoader yielding dict batches."
        )
    if "pixel_values" not in sample:
        raise ValueError(f"The evaluation dataset has no 'pixel_values' column (columns: {sorted(sample)}).")
    _label_key(sample)


def to_pixel_tensor(value: Any) -> torch.Tensor:
    """Stack pixel values (tensor, numpy array, nested lists, or a list of those) into a float tensor; uint8 frames are
    scaled by 1/255."""
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(value)
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        tensor = torch.stack(list(value))
    else:
        tensor = torch.as_tensor(np.asarray(value))
    if not tensor.is_floating_point():
        if tensor.dtype == torch.bool or tensor.is_complex():
            raise ValueError(f"pixel_values must be float in [0, 1] or 8-bit frames, got dtype {tensor.dtype}.")
        return to_unit_float(tensor)  # 8-bit frames scaled by 1/255, as the collator and transformers' processors do
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor


def to_label_tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        array = np.asarray(value)
        if array.dtype.kind not in "iufb":  # None, strings or ragged lists among the labels
            raise ValueError(f"labels must be integer class indices, got {value!r} (a row without a label?).")
        value = torch.as_tensor(array)
    tensor = value
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {tensor.dtype}.")
    return tensor.long().reshape(-1)


def sample_shape(sample: Mapping) -> tuple[int, ...]:
    """Shape of one sample's pixel values ``(frames, channels, height, width)``."""
    value = sample["pixel_values"]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return tuple(value.shape)
    return tuple(np.asarray(value).shape)


class DataSource:
    """Base class: ``num_samples`` (``None`` if unknown before iterating), ``first_sample()`` and ``batches()``."""

    num_samples: int | None = None

    def first_sample(self) -> Mapping:
        raise NotImplementedError

    def batches(self, batch_size: int, wanted: set[int] | None, world: int, rank: int) -> Iterator[Batch]:
        """Yield this process's batches (``index % world == rank``); batches not in ``wanted`` are yielded without
        tensors (``pixel_values is None``) so that callers can account for them without paying for loading."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples}


class IndexedSource(DataSource):
    """Random-access sources: ``datasets.Dataset`` (any format), lists / tuples of dicts, map-style torch datasets."""

    def __init__(self, data: Any, max_samples: int | None):
        self.data = data
        total = len(data)
        self.num_samples = total if max_samples is None else min(total, max_samples)
        self._is_hf = _is_hf_dataset(data)

    def first_sample(self) -> Mapping:
        return self.data[0]

    def _load(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._is_hf:
            columns = self.data[start:stop]
            key = _label_key(columns)
            return to_pixel_tensor(columns["pixel_values"]), to_label_tensor(columns[key])
        samples = [self.data[i] for i in range(start, stop)]
        for sample in samples:
            _check_sample(sample)
        key = _label_key(samples[0])
        pixels = to_pixel_tensor([to_pixel_tensor(s["pixel_values"]) for s in samples])
        labels = to_label_tensor([int(to_label_tensor(s[key])[0]) for s in samples])
        return pixels, labels

    def batches(self, batch_size, wanted, world, rank):
        num_batches = -(-self.num_samples // batch_size)
        for index in range(rank, num_batches, world):
            start, stop = index * batch_size, min((index + 1) * batch_size, self.num_samples)
            batch = Batch(index=index, indices=list(range(start, stop)))
            if wanted is None or index in wanted:
                batch.pixel_values, batch.labels = self._load(start, stop)
            yield batch

    def labels(self) -> list[int] | None:
        """All labels when they can be read without loading pixels (for the resume fingerprint and range checks)."""
        if self._is_hf:
            if (self.data.format or {}).get("type") == "custom":
                return None  # a with_transform / set_transform may need other columns: labels come per batch
            key = _label_key({name: None for name in self.data.column_names})
            return [int(v) for v in list(self.data[key][: self.num_samples])]
        if isinstance(self.data, (list, tuple)):
            out = []
            for sample in self.data[: self.num_samples]:
                _check_sample(sample)
                out.append(int(to_label_tensor(sample[_label_key(sample)])[0]))
            return out
        return None

    def fingerprint(self) -> dict[str, Any]:
        fp: dict[str, Any] = {"num_samples": self.num_samples}
        labels = self.labels()
        if labels is not None:
            fp["labels_sha256"] = hashlib.sha256(",".join(map(str, labels)).encode()).hexdigest()
        first = to_pixel_tensor(self.first_sample()["pixel_values"]).float().contiguous()
        fp["first_sample_sha256"] = hashlib.sha256(first.numpy().tobytes()).hexdigest()
        return fp


class IterableSource(DataSource):
    """Sequential sources (DataLoaders, generators, iterable datasets) yielding samples or batches.

    Items are split into samples and regrouped into ``batch_size`` batches, so the evaluation's batches do not depend
    on the loader's own batch size. The iteration order must be deterministic (no shuffling) for sharded or resumed
    runs to be meaningful.
    """

    def __init__(self, data: Iterable, max_samples: int | None):
        self.data = data
        self.max_samples = max_samples
        self._first: Mapping | None = None
        self._consumed_iterator: Iterator | None = None
        self.num_samples = None
        dataset = getattr(data, "dataset", None)
        try:
            known = len(dataset) if dataset is not None else None
        except TypeError:
            known = None
        if known is not None:
            self.num_samples = known if max_samples is None else min(known, max_samples)

    def _iter_items(self) -> Iterator[Mapping]:
        if self._consumed_iterator is not None:  # a one-shot iterator whose first item we already peeked
            iterator, self._consumed_iterator = self._consumed_iterator, None
            return iterator
        return iter(self.data)

    def first_sample(self) -> Mapping:
        if self._first is None:
            iterator = iter(self.data)
            try:
                item = next(iterator)
            except StopIteration:
                raise ValueError("The evaluation dataset is empty.") from None
            if iterator is self.data:  # one-shot iterator: keep the peeked item
                self._consumed_iterator = itertools.chain([item], iterator)
            _check_sample(item)
            self._first = _first_of(item)
        return self._first

    def _samples(self) -> Iterator[tuple[torch.Tensor, int]]:
        count = 0
        for item in self._iter_items():
            _check_sample(item)
            key = _label_key(item)
            pixels = to_pixel_tensor(item["pixel_values"])
            labels = to_label_tensor(item[key])
            if pixels.ndim == 5:
                pairs = zip(pixels.unbind(0), labels.tolist())
            else:
                pairs = [(pixels, int(labels[0]))]
            for pair in pairs:
                if self.max_samples is not None and count >= self.max_samples:
                    return
                count += 1
                yield pair

    def batches(self, batch_size, wanted, world, rank):
        samples = self._samples()
        index = 0
        while True:
            chunk = list(itertools.islice(samples, batch_size))
            if not chunk:
                return
            if index % world == rank:
                start = index * batch_size
                batch = Batch(index=index, indices=list(range(start, start + len(chunk))))
                if wanted is None or index in wanted:
                    batch.pixel_values = torch.stack([c[0] for c in chunk])
                    batch.labels = torch.tensor([c[1] for c in chunk], dtype=torch.long)
                yield batch
            index += 1

    def fingerprint(self) -> dict[str, Any]:
        first = to_pixel_tensor(self.first_sample()["pixel_values"]).float().contiguous()
        return {
            "num_samples": self.num_samples,
            "first_sample_sha256": hashlib.sha256(first.numpy().tobytes()).hexdigest(),
        }


def _first_of(item: Mapping) -> Mapping:
    """The first sample of an item that may be a batch."""
    pixels = item["pixel_values"]
    shape = pixels.shape if isinstance(pixels, (torch.Tensor, np.ndarray)) else np.asarray(pixels).shape
    key = _label_key(item)
    if len(shape) == 5:
        labels = item[key]
        return {"pixel_values": pixels[0], key: labels[0]}
    return item


def _is_hf_dataset(data: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, datasets.Dataset)


def make_source(dataset: Any, max_samples: int | None = None) -> DataSource:
    """Wrap any supported dataset in a [`DataSource`], raising clear errors for empty or unlabeled data."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}.")
    try:
        import datasets

        if isinstance(dataset, datasets.DatasetDict):
            raise TypeError(f"Got a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['test'].")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(dataset, Mapping):
        raise TypeError("Pass a dataset (rows of dicts), not a single dict; wrap a single batch in a list.")
    is_loader = isinstance(dataset, torch.utils.data.DataLoader)
    indexable = (
        not is_loader
        and hasattr(dataset, "__len__")
        and hasattr(dataset, "__getitem__")
        and not isinstance(dataset, torch.utils.data.IterableDataset)
    )
    if indexable:
        if len(dataset) == 0:
            raise ValueError("The evaluation dataset is empty.")
        source: DataSource = IndexedSource(dataset, max_samples)
        if _is_hf_dataset(dataset) and (dataset.format or {}).get("type") != "custom":
            names = set(dataset.column_names)
            if "pixel_values" not in names:
                hint = (
                    " Decode its videos first: `hf_videomoe.data.decode_video_dataset(dataset, num_frames, image_size)`."
                    if "video" in names
                    else ""
                )
                raise ValueError(
                    f"The evaluation dataset has no 'pixel_values' column (columns: {sorted(names)}).{hint}"
                )
            _label_key({n: None for n in names})
        else:  # plain rows, or a dataset whose transform (e.g. a video decoder) makes pixel_values on access
            _check_sample(source.first_sample())
        return source
    if isinstance(dataset, Sequence) or isinstance(dataset, Iterable):
        source = IterableSource(dataset, max_samples)
        source.first_sample()
        return source
    raise TypeError(f"Unsupported evaluation dataset type {type(dataset).__name__}.")


def stack_pixel_values(dataset: Any, max_clips: int | None = None, batch_size: int = 64) -> torch.Tensor:
    """The first ``max_clips`` clips of ``dataset`` (any dataset `evaluate_robustness` takes) as one
    ``(clips, frames, channels, height, width)`` float tensor, e.g. calibration clips for
    [`~hf_videomoe.moe.cluster_routers`]."""
    source = make_source(dataset, max_clips)
    return torch.cat([batch.pixel_values for batch in source.batches(batch_size, None, 1, 0)])
