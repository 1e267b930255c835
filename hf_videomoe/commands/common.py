"""What the ``hf-videomoe`` subcommands share: argument types (ε written one way in every flag), the data options,
and loading a dataset or a checkpoint (a dense one in the [0, 1] pixel space the attacks use)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLIError",
    "DataArguments",
    "EPS_HELP",
    "add_data_arguments",
    "applicable_attack_names",
    "checkpoint_geometry",
    "eps_list",
    "load_dataset",
    "load_model",
    "non_negative_int",
    "parse_eps",
    "parse_eps_any_norm",
    "pixel_eps_error",
    "positive_float",
    "positive_int",
    "subset",
]

EPS_HELP = "a fraction of the [0, 1] pixel range: 8/255 or 0.0314 (not 8)"


class CLIError(Exception):
    """An error the user can act on; printed without a traceback."""


# argparse types: a bad value exits 2 with "argument --flag: ..." before any work.
def _integer_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _integer_at_least(1, "a positive integer")
non_negative_int = _integer_at_least(0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A positive finite number (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {value}")
    return value


def pixel_eps_error(value: float) -> str | None:
    """Why ``value`` is not an L∞ budget in (0, 1] pixel units (``None`` when it is one)."""
    if 0.0 < value <= 1.0:
        return None
    return f"expected ε in (0, 1] as a fraction of the pixel range; got {value:g}; write {value:g}/255 or {value / 255:.4f}"


def _parse_eps_value(text: str) -> float:
    raw = str(text).strip()
    try:
        if "/" in raw:
            numerator, denominator = raw.split("/", 1)
            value = float(numerator) / float(denominator)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected ε as {EPS_HELP}, got {raw!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite ε ({EPS_HELP}), got {raw!r}")
    return value


def parse_eps(text: str) -> float:
    """An L∞ budget written ``8/255`` or ``0.0314`` (argparse type of every ε flag).

    A value above 1 is refused (``8`` would be 8 times the whole pixel range): the message says to write ``8/255``.
    """
    value = _parse_eps_value(text)
    error = pixel_eps_error(value)
    if error:
        raise argparse.ArgumentTypeError(error)
    return value


def parse_eps_any_norm(text: str) -> float:
    """Like [`parse_eps`] but a value above 1 passes: an L2 budget may exceed 1. Commands with ``--norm`` check the
    L∞ range after parsing with [`pixel_eps_error`]."""
    return _parse_eps_value(text)


def eps_list(text: str) -> list[float]:
    """``4/255,8/255`` or ``0.0157,0.0314`` → [4/255, 8/255] (argparse type of ``--eps-sweep``)."""
    items = [item for item in str(text).split(",")]
    if not all(item.strip() for item in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated ε values such as 4/255,8/255, got {text!r}")
    return [parse_eps_any_norm(item) for item in items]


# ----------------------------------------------------------------------------------------------------------------------
# Data options: one definition for `train` (HfArgumentParser) and `attack` / `evaluate` (argparse)


@dataclass
class DataArguments:
    """Where the clips come from: the MovingShapes benchmark or a local video folder. (``train`` takes the
    MovingShapes generator seed from ``--data_seed``, which also seeds Trainer's sampler.)"""

    dataset: str = field(
        default="moving-shapes",
        metadata={"help": "'moving-shapes' (the built-in synthetic benchmark) or a local video folder (see --layout)."},
    )
    layout: str = field(
        default="folders",
        metadata={
            "help": "Layout of a local video folder: class-per-folder, UCF-101 / HMDB-51 with split files, or a `datasets` "
            "videofolder (<split>/<class>/<video>, read with load_dataset('videofolder')). attack / evaluate decode it with "
            "the model's frames, size and processor resize.",
            "choices": ["folders", "ucf101", "hmdb51", "videofolder"],
        },
    )
    split_dir: str | None = field(default=None, metadata={"help": "Folder with the UCF-101 / HMDB-51 split files."})
    split_id: int = field(default=1, metadata={"help": "Official split number (1-3) for UCF-101 / HMDB-51."})
    num_videos: int = field(default=800, metadata={"help": "MovingShapes: clips to generate (train + test)."})
    difficulty: str = field(
        default="easy",
        metadata={
            "help": "MovingShapes difficulty (default easy: the level a small model learns in minutes on a CPU; medium / "
            "hard need far longer runs, docs/RESULTS.md §1).",
            "choices": ["easy", "medium", "hard"],
        },
    )
    decode_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder for a decode-once cache of a video folder's clips (uint8 frames in a memory-mapped Arrow "
            "table, about 2.4 MB per 16 x 224 x 224 clip): later epochs read instead of decoding (docs/bench_data.md). "
            "Rebuilt when the files or the preprocessing change; splits with random frame sampling are not cached."
        },
    )
    num_frames: int = field(default=8, metadata={"help": "Frames per clip."})
    image_size: int = field(default=32, metadata={"help": "Frame height and width."})

    def __post_init__(self):
        for name in ("num_videos", "num_frames", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")

    def moving_shapes_kwargs(self, seed: int) -> dict[str, Any] | None:
        """``make_moving_shapes`` arguments (the model card's reproduction snippet), ``None`` for a video folder."""
        if self.dataset != "moving-shapes":
            return None
        return {
            "num_videos": self.num_videos,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "seed": seed,
            "difficulty": self.difficulty,
        }


#: argparse types of the data options where `int` alone would accept nonsense.
DATA_TYPES = {"num_videos": positive_int, "num_frames": positive_int, "image_size": positive_int}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The [`DataArguments`] options (dash form) plus ``--data-seed``, in a "data" group of ``parser``."""
    group = parser.add_argument_group("data")
    for item in dataclasses.fields(DataArguments):
        kwargs = dict(item.metadata)
        kwargs.setdefault("type", DATA_TYPES.get(item.name, int if item.type in (int, "int") else None))
        if kwargs["type"] is None:
            del kwargs["type"]
        group.add_argument(f"--{item.name.replace('_', '-')}", default=item.default, **kwargs)
    group.add_argument("--data-seed", type=int, default=0, help="Seed of the MovingShapes generator.")


def checkpoint_geometry(model, path: str, announce=print) -> dict[str, Any]:
    """How a video folder is decoded for the checkpoint at ``path``: its ``num_frames`` and ``image_size``, and its
    processor's resize (`decode_settings`), so the evaluated pixels are the ones its processors hand the model."""
    from ..data.decode import model_geometry
    from ..models.processing import load_local_image_processor

    try:
        return model_geometry(model, load_local_image_processor(path))
    except ValueError as err:  # e.g. a processor resizing to a fixed height x width: crop / resize as ours do
        geometry = model_geometry(model, processor=None)
        announce(f"{path}: {err} Videos are decoded with the shorter side resized to {geometry['image_size']}.")
        return geometry


def load_dataset(data, split: str, seed: int = 0, geometry: dict[str, Any] | None = None):
    """The requested split of ``data`` (a [`DataArguments`] or a namespace with its fields) as a `datasets.Dataset`
    with ``pixel_values`` and ``labels``; ``seed`` seeds the MovingShapes generator.

    ``geometry``: how videos are decoded for a checkpoint (see [`checkpoint_geometry`]); it replaces ``--num-frames``
    / ``--image-size`` for video folders, which must match the model anyway."""
    from ..data import cache_decoded_videos, decode_video_dataset, load_video_folder, make_moving_shapes

    if data.dataset == "moving-shapes":
        generated = make_moving_shapes(
            data.num_videos,
            num_frames=data.num_frames,
            image_size=data.image_size,
            seed=seed,
            difficulty=data.difficulty,
        )
        return generated[split]
    path = Path(data.dataset)
    if not path.exists():
        raise CLIError(f"--dataset {path} does not exist (use 'moving-shapes' or a local video folder).")
    geometry = geometry or {"num_frames": data.num_frames, "image_size": data.image_size}
    if data.layout == "videofolder":  # a `datasets` table with a Video feature, decoded by the library's reader
        import datasets

        table = datasets.load_dataset("videofolder", data_dir=str(path))
        if split not in table:
            raise CLIError(
                f"--dataset {path} (videofolder) has splits {sorted(table)}, not {split!r}: put the videos "
                f"in {path}/{split}/<class>/."
            )
        videos = decode_video_dataset(table[split], train=split == "train", **geometry)
        return cache_decoded_videos(videos, data.decode_cache) if getattr(data, "decode_cache", None) else videos
    kwargs = {"layout": data.layout, "split": split}
    if data.layout != "folders":
        kwargs.update(split_id=data.split_id, split_dir=data.split_dir)
    videos = load_video_folder(path, **geometry, **kwargs)
    return cache_decoded_videos(videos, data.decode_cache) if getattr(data, "decode_cache", None) else videos


def subset(dataset, num_samples: int | None):
    """The first ``num_samples`` clips of ``dataset`` (all of them when ``None``)."""
    if num_samples is not None and num_samples < len(dataset):
        return dataset.select(range(num_samples))
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Models


def load_model(path: str, *, pixel_space: bool = True, announce=print):
    """Load the checkpoint at ``path`` for evaluation.

    With ``pixel_space`` (what `attack` and `evaluate` use), the model takes pixels in [0, 1] whatever it is: MoE models
    normalise inside; a dense checkpoint whose processor normalises (e.g. ImageNet statistics) is wrapped in
    [`~hf_videomoe.attacks.NormalizedModel`] with the processor's statistics (`announce` says so), so ε means the same
    pixel budget and the clean accuracy is the one the processor's users get.
    """
    from transformers import AutoModelForVideoClassification

    import hf_videomoe  # noqa: F401  (registers the Auto classes)

    from ..attacks import pixel_space_model

    if not Path(path).exists():
        raise CLIError(f"--model {path} does not exist: pass a directory written by `hf-videomoe train`.")
    try:
        model = AutoModelForVideoClassification.from_pretrained(path).eval()
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(f"--model {path} could not be loaded: {err}") from err
    if not pixel_space:
        return model
    wrapped = pixel_space_model(model, path)
    if wrapped is not model:
        mean, std = ([round(v, 4) for v in stats.flatten().tolist()] for stats in (wrapped.mean, wrapped.std))
        announce(
            f"{path}: dense checkpoint whose processor normalises (mean {mean}, std {std}): inputs stay in "
            "[0, 1] and are normalised before the model, as its processor does."
        )
    return wrapped


def applicable_attack_names(names: list[str], model, flag: str, announce=print) -> list[str]:
    """``names`` without the MoE-only attacks when ``model`` has no MoE layer (one line says which were dropped);
    a `CLIError` when nothing is left."""
    from ..attacks import split_attacks_for_model

    kept, dropped = split_attacks_for_model(names, model)
    if dropped:
        if not kept:
            raise CLIError(
                f"{flag} {','.join(names)}: every attack targets MoE routers / experts, but the model has "
                "no MoE layer; use e.g. pgd, apgd-ce or square."
            )
        announce(f"Dropped MoE-only attacks for this dense model: {', '.join(dropped)} (running {', '.join(kept)}).")
    return kept
