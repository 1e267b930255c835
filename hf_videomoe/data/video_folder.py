"""Video classification datasets from local folders (plain class folders, UCF-101, HMDB-51).

The datasets store video paths and labels; frames are decoded lazily with PyAV by a transform, so loading a folder
is fast and memory use does not grow with the number of videos.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .decode import VideoDecodeTransform
from .video_io import SAMPLING_MODES, VIDEO_EXTENSIONS, SamplingMode, VideoDecodeError, probe_video, write_video

LAYOUTS: tuple[str, ...] = ("folders", "ucf101", "hmdb51")
"""Folder layouts understood by [`load_video_folder`]."""

_FOLDER_SPLITS = ("train", "validation", "test")
_UCF101_SPLIT_DIRS = ("ucfTrainTestlist",)
_HMDB51_SPLIT_DIRS = ("testTrainMulti_7030_splits", "test_train_splits")
_MAX_LISTED = 5


def _listed(paths: Sequence[object]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    return shown + (f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else "")


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _subdirectories(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a directory.")
    return path


# A split maps to (video path, class name) pairs.
_Samples = dict[str, list[tuple[Path, str]]]


def _scan_folders(root: Path) -> _Samples:
    """``root/<class>/<video>``, or ``root/<split>/<class>/<video>`` when every subfolder is a split name."""
    subdirectories = _subdirectories(root)
    if subdirectories and all(d.name in _FOLDER_SPLITS for d in subdirectories):
        names = {d.name for d in subdirectories}
        split_roots = {name: root / name for name in _FOLDER_SPLITS if name in names}
    else:
        split_roots = {"train": root}
    samples = {}
    for split, split_root in split_roots.items():
        class_dirs = _subdirectories(split_root)
        if not class_dirs:
            raise ValueError(f"{split_root} contains no class folders; expected <class name>/<video files>.")
        samples[split] = []
        for class_dir in class_dirs:
            videos = sorted(p for p in class_dir.iterdir() if _is_video(p))
            if not videos:
                extensions = ", ".join(sorted(VIDEO_EXTENSIONS))
                raise ValueError(f"Class folder {class_dir} contains no video files (extensions: {extensions}).")
            samples[split].extend((video, class_dir.name) for video in videos)
    return samples


def _default_split_dir(root: Path, candidates: Sequence[str]) -> Path:
    # The official archives unpack the split files next to the video folder, so look there too.
    for folder in (root, root.parent):
        for name in candidates:
            if (folder / name).is_dir():
                return folder / name
    return root


def _read_lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Split file {path} does not exist.")
    with open(path, encoding="utf-8-sig") as handle:
        return [line.split() for line in handle if line.strip()]


def _check_exist(samples: list[tuple[Path, str]], split_file: Path) -> None:
    missing = [video for video, _ in samples if not video.is_file()]
    if missing:
        raise FileNotFoundError(f"{split_file} lists {len(missing)} video(s) that do not exist: {_listed(missing)}.")


def _scan_ucf101(root: Path, split_dir: Path, split_id: int) -> tuple[_Samples, list[str] | None]:
    """UCF-101: ``trainlist0k.txt`` ("Class/v_x.avi 1"), ``testlist0k.txt`` ("Class/v_x.avi"), ``classInd.txt``."""
    class_names = None
    class_index_file = split_dir / "classInd.txt"
    if class_index_file.is_file():
        entries = []
        for row in _read_lines(class_index_file):
            if len(row) != 2 or not row[0].isdigit():
                line = " ".join(row)
                raise ValueError(f"Malformed line {line!r} in {class_index_file}; expected '<index> <class>'.")
            entries.append((int(row[0]), row[1]))
        class_names = [name for _, name in sorted(entries)]
    samples = {}
    for split, prefix in (("train", "trainlist"), ("test", "testlist")):
        split_file = split_dir / f"{prefix}{split_id:02d}.txt"
        rows = _read_lines(split_file)
        samples[split] = [(root / row[0], Path(row[0]).parts[0]) for row in rows]
        _check_exist(samples[split], split_file)
    return samples, class_names


def _scan_hmdb51(root: Path, split_dir: Path, split_id: int) -> _Samples:
    """HMDB-51: ``<class>_test_split<k>.txt`` with lines "<video>.avi <0|1|2>" (1 train, 2 test, 0 unused)."""
    suffix = f"_test_split{split_id}.txt"
    split_files = sorted(p for p in split_dir.iterdir() if p.name.endswith(suffix))
    if not split_files:
        raise FileNotFoundError(f"No HMDB-51 split files '*{suffix}' in {split_dir}.")
    samples = {"train": [], "test": []}
    for split_file in split_files:
        class_name = split_file.name[: -len(suffix)]
        listed = {"1": [], "2": []}
        for row in _read_lines(split_file):
            if len(row) < 2 or row[1] not in ("0", "1", "2"):
                raise ValueError(f"Malformed line {' '.join(row)!r} in {split_file}; expected '<video> <0|1|2>'.")
            if row[1] in listed:
                listed[row[1]].append((root / class_name / row[0], class_name))
        for split, key in (("train", "1"), ("test", "2")):
            _check_exist(listed[key], split_file)
            samples[split].extend(listed[key])
    return samples


def _resolve_class_names(samples: _Samples, class_names: Sequence[str] | None, source: object) -> list[str]:
    found = sorted({name for split in samples.values() for _, name in split})
    if class_names is None:
        return found
    class_names = list(class_names)
    known = {name.lower() for name in class_names}
    unknown = [name for name in found if name.lower() not in known]
    if unknown:
        raise ValueError(f"{source} has classes missing from `class_names`: {_listed(unknown)}.")
    return class_names


def _drop_undecodable(samples: list[tuple[Path, str]], strict: bool, split: str) -> list[tuple[Path, str]]:
    kept, failures = [], []
    for video, class_name in samples:
        try:
            probe_video(video)
        except VideoDecodeError as error:
            if strict:
                raise ValueError(f"Could not decode video {video}: {error}") from error
            failures.append(f"{video} ({error})")
            continue
        kept.append((video, class_name))
    if failures:
        message = (
            f"Skipped {len(failures)} of {len(samples)} videos in split {split!r} that could not be decoded: "
            f"{_listed(failures)}"
        )
        warnings.warn(message, stacklevel=3)
    if not kept:
        raise ValueError(f"None of the {len(samples)} videos in split {split!r} could be decoded.")
    return kept


def _check_load_arguments(layout: str, sampling: str, num_frames: int, image_size: int, split_id: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}, got {layout!r}.")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"`sampling` must be one of {SAMPLING_MODES}, got {sampling!r}.")
    for name, value in (("num_frames", num_frames), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if layout != "folders" and split_id not in (1, 2, 3):
        raise ValueError(f"`split_id` must be 1, 2 or 3, got {split_id!r}.")


def _scan_layout(
    root: Path, layout: str, split_dir: str | os.PathLike | None, split_id: int
) -> tuple[_Samples, list[str] | None]:
    """The samples of every split in ``layout``, and the class names in label order when the layout's files fix them
    (UCF-101's ``classInd.txt``)."""
    if layout == "folders":
        return _scan_folders(root), None
    candidates = _UCF101_SPLIT_DIRS if layout == "ucf101" else _HMDB51_SPLIT_DIRS
    splits_at = _default_split_dir(root, candidates) if split_dir is None else Path(split_dir)
    _require_dir(splits_at, "Split directory")
    if layout == "ucf101":
        return _scan_ucf101(root, splits_at, split_id)
    return _scan_hmdb51(root, splits_at, split_id), None


def load_video_folder(
    path: str | os.PathLike,
    num_frames: int,
    image_size: int,
    layout: Literal["folders", "ucf101", "hmdb51"] = "folders",
    split: str | None = None,
    split_dir: str | os.PathLike | None = None,
    split_id: int = 1,
    sampling: SamplingMode = "uniform",
    class_names: Sequence[str] | None = None,
    strict: bool = False,
    verify: bool = True,
    seed: int = 0,
    shortest_edge: int | None = None,
    resample: str = "bilinear",
) -> Dataset | DatasetDict:
    """Load a video classification dataset from a local folder.

    The returned datasets hold a ``video`` column (file paths) and ``labels`` (`ClassLabel`); a transform set with
    `Dataset.set_transform` decodes frames with PyAV on access, so ``dataset[i]`` gives ``pixel_values``
    (float32 ``(num_frames, 3, image_size, image_size)`` in ``[0, 1]``) and ``labels``. Frames are sampled, resized,
    cropped and rescaled exactly as transformers' video processor does with the processor config saved with our
    checkpoints (see [`read_video`]), so a model evaluated here sees what ``pipeline("video-classification")`` feeds
    it. Videos shorter than `num_frames` are padded by repeating frames (see [`sample_frame_indices`]).

    Because ``video`` is not a model input, `transformers.Trainer` needs
    `TrainingArguments(remove_unused_columns=False)` to keep it for the transform.

    Layouts:

    - ``"folders"``: ``path/<class>/<video>``; or ``path/<split>/<class>/<video>`` when every subfolder of
      `path` is named ``train``, ``validation`` or ``test`` (the layout written by [`write_video_folder`] for a
      `DatasetDict`). Without split folders, every video belongs to a ``train`` split.
    - ``"ucf101"``: ``path/<Class>/v_<Class>_gXX_cYY.avi`` with ``trainlist0k.txt`` (lines
      ``"<Class>/<video> <class index>"``), ``testlist0k.txt`` (lines ``"<Class>/<video>"``) and ``classInd.txt``
      (lines ``"<index> <Class>"``, 1-based) in `split_dir`. Label ids follow ``classInd.txt`` (id = index - 1).
    - ``"hmdb51"``: ``path/<class>/<video>.avi`` with ``<class>_test_split<k>.txt`` files in `split_dir`, lines
      ``"<video> <0|1|2>"`` where 1 marks training videos, 2 test videos and 0 unused ones.

    By default `split_dir` is the first folder named ``ucfTrainTestlist`` (UCF-101) or
    ``testTrainMulti_7030_splits`` / ``test_train_splits`` (HMDB-51) inside `path` or next to it, else `path`.

    Unless `class_names` or ``classInd.txt`` fixes them, label ids index the sorted class names.

    Args:
        path (`str` or `os.PathLike`): Root folder.
        num_frames (`int`): Frames per clip.
        image_size (`int`): Height and width of the output frames.
        layout (`str`, *optional*, defaults to `"folders"`): `"folders"`, `"ucf101"` or `"hmdb51"`.
        split (`str`, *optional*): Return only this split as a `Dataset`. By default all splits are returned as a
            `DatasetDict` (``train`` and ``test`` for UCF-101 and HMDB-51).
        split_dir (`str` or `os.PathLike`, *optional*): Folder of the UCF-101 / HMDB-51 split files.
        split_id (`int`, *optional*, defaults to 1): Which of the three official splits (1, 2 or 3).
        sampling (`str`, *optional*, defaults to `"uniform"`): Frame sampling, see [`sample_frame_indices`]:
            `"uniform"`, `"random"` or `"segment"`. The ``train`` split samples at random for `"random"` and
            `"segment"`; the other splits are deterministic (segment middles, seeded random indices).
        class_names (`Sequence[str]`, *optional*): Class names in label-id order, e.g.
            [`MOVING_SHAPES_CLASSES`] to read back a MovingShapes dataset with its original label ids.
        strict (`bool`, *optional*, defaults to `False`): Raise `ValueError` naming the file when a video cannot
            be decoded. Otherwise undecodable videos are dropped at load time with one warning counting them, and
            a video that fails later, while decoding, is replaced by the next decodable one with a warning.
        verify (`bool`, *optional*, defaults to `True`): Probe every video at load time (open it and decode its
            first frame). Disable for very large datasets; decoding failures are then only handled on access.
        seed (`int`, *optional*, defaults to 0): Seed of the random frame sampling.
        shortest_edge (`int`, *optional*), resample (`str`, *optional*, defaults to `"bilinear"`): The resize before
            the central crop (see [`resize_frames`]); for a checkpoint, pass
            ``**hf_videomoe.data.decode_settings(AutoImageProcessor.from_pretrained(path))``.

    Returns:
        `datasets.Dataset` if `split` is given, else `datasets.DatasetDict`.

    Raises:
        FileNotFoundError: If `path`, `split_dir`, a split file or a video listed in a split file does not exist.
        ValueError: For invalid arguments, a class folder without videos, or an undecodable video when `strict`.
    """
    _check_load_arguments(layout, sampling, num_frames, image_size, split_id)
    root = _require_dir(Path(path).expanduser().absolute(), "Video folder")
    samples, official_names = _scan_layout(root, layout, split_dir, split_id)
    names = _resolve_class_names(samples, class_names if class_names is not None else official_names, root)

    if split is not None:
        if split not in samples:
            raise ValueError(f"Split {split!r} not found in {root}; available splits: {sorted(samples)}.")
        samples = {split: samples[split]}

    # Match class names case-insensitively: hand-written split files do not always keep the folder case.
    label_of = {name.lower(): index for index, name in enumerate(names)}
    features = Features({"video": Value("string"), "labels": ClassLabel(names=names)})
    datasets = {}
    for split_name, split_samples in samples.items():
        if verify:
            split_samples = _drop_undecodable(split_samples, strict, split_name)
        videos = [str(video) for video, _ in split_samples]
        labels = [label_of[class_name.lower()] for _, class_name in split_samples]
        dataset = Dataset.from_dict({"video": videos, "labels": labels}, features=features, split=split_name)
        dataset.set_transform(
            VideoDecodeTransform(
                num_frames,
                image_size,
                sampling,
                train=split_name == "train",
                strict=strict,
                seed=seed,
                shortest_edge=shortest_edge,
                resample=resample,
                videos=videos,
                labels=labels,
            )
        )
        datasets[split_name] = dataset
    return datasets[split] if split is not None else DatasetDict(datasets)


def write_video_folder(
    dataset: Dataset | DatasetDict,
    path: str | os.PathLike,
    fps: int = 8,
    crf: int = 10,
    batch_size: int = 64,
) -> Path:
    """Write clips as H.264 ``.mp4`` files in the ``"folders"`` layout of [`load_video_folder`].

    A `Dataset` is written to ``path/<class name>/<row index>.mp4`` and a `DatasetDict` to
    ``path/<split>/<class name>/<row index>.mp4``, so ``load_video_folder(path, ...)`` reads it back (pass
    ``class_names=dataset.features["labels"].names`` to keep the original label ids; by default they index the
    sorted class names). Encoding uses libx264 with 4:4:4 chroma (odd frame sizes are fine); at the default `crf`
    the mean absolute round-trip error on MovingShapes is about 0.01.

    Args:
        dataset (`Dataset` or `DatasetDict`): Rows with ``pixel_values`` (``(frames, 3, height, width)``, float in
            ``[0, 1]`` or uint8) and ``labels`` (a `ClassLabel` names the class folders; plain integers give
            folders named after the id).
        path (`str` or `os.PathLike`): Output root, created if needed.
        fps (`int`, *optional*, defaults to 8): Frame rate of the files.
        crf (`int`, *optional*, defaults to 10): x264 quality (0 lossless, 23 x264's default).
        batch_size (`int`, *optional*, defaults to 64): Rows read from the dataset at a time.

    Returns:
        `pathlib.Path`: The output root.
    """
    root = Path(path)
    if isinstance(dataset, DatasetDict):
        for split_name, split_dataset in dataset.items():
            if split_name not in _FOLDER_SPLITS:
                raise ValueError(f"Split {split_name!r} cannot be read back; use one of {_FOLDER_SPLITS}.")
            write_video_folder(split_dataset, root / split_name, fps=fps, crf=crf, batch_size=batch_size)
        return root
    label_feature = dataset.features.get("labels")
    if label_feature is None:
        raise ValueError(f"`dataset` needs a 'labels' column; it has {dataset.column_names}.")
    digits = len(str(max(len(dataset) - 1, 0)))
    # Read stored pixels as numpy in batches; a dataset decoded by a transform is read through that transform.
    if "pixel_values" in dataset.column_names:
        dataset = dataset.select_columns(["pixel_values", "labels"]).with_format("numpy")
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        if "pixel_values" not in batch:
            raise ValueError(f"`dataset` rows need 'pixel_values'; got {sorted(batch)}.")
        for offset, (clip, label) in enumerate(zip(batch["pixel_values"], batch["labels"])):
            label = int(label)
            class_name = label_feature.int2str(label) if isinstance(label_feature, ClassLabel) else str(label)
            class_dir = root / class_name
            class_dir.mkdir(parents=True, exist_ok=True)
            write_video(class_dir / f"{start + offset:0{digits}d}.mp4", clip, fps=fps, crf=crf)
    return root
