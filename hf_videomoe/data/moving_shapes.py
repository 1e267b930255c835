"""MovingShapes: a procedural video-classification benchmark where frame order matters.

Every clip shows one main shape performing one of eight motions. The classes come in time-reversed pairs
(``move_left``/``move_right``, ``move_up``/``move_down``, ``grow``/``shrink``,
``rotate_clockwise``/``rotate_anticlockwise``) and class ``c`` is paired with class ``c ^ 1``. The generative
process is built so that *a clip of class ``c`` played backwards is distributed exactly like a clip of class
``c ^ 1``*: every nuisance factor (background, static clutter, distractor motion, pixel noise) has a
time-reversible law and every class-specific trajectory is symmetric in its start and end point. A model that
ignores frame order therefore cannot beat 50 % accuracy within a pair.

Layout of ``pixel_values``: ``(frames, channels=3, height, width)``, float32 in ``[0, 1]``. Image coordinates
have ``y`` pointing down, so "clockwise" is clockwise as seen on screen.

This module samples what each clip shows and builds the dataset; `shape_rendering` draws the clips.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np
import pyarrow as pa
from datasets import Array4D, ClassLabel, Dataset, DatasetDict, DatasetInfo, Features
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

# MOVING_SHAPES_SHAPES is defined beside the renderer that draws the shapes and stays importable from here.
from .shape_rendering import MOVING_SHAPES_SHAPES, ClipParams, Sprites, make_sprite, render_clips

MOVING_SHAPES_CLASSES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "rotate_clockwise",
    "rotate_anticlockwise",
)
"""Class names of MovingShapes, indexed by label id. The time-reversed pair of class ``c`` is ``c ^ 1``."""

DIFFICULTY_LEVELS: dict[str, float] = {"easy": 0.0, "medium": 0.5, "hard": 1.0}
"""Named difficulties and the level in ``[0, 1]`` they stand for."""

# Bump when the sampling or the rendering (shape_rendering.py) changes, so that dataset fingerprints (and thus
# `datasets` caches) change too.
_GENERATOR_VERSION = 1
_NUM_CLASSES = len(MOVING_SHAPES_CLASSES)
_ROTATING = (6, 7)
# Rendering is vectorised over chunks of clips; a (chunk, frames, height, width) array of about this many
# elements keeps temporaries cache-friendly (measured: 2x faster than 4x larger chunks).
_CHUNK_ELEMENTS = 1 << 19
# Arrow list offsets are int32, so the pixel column is split into chunks of fewer than 2**31 values.
_MAX_CHUNK_VALUES = 1 << 30


def paired_class(label: int) -> int:
    """Return the class whose clips are the time reversal of clips of class `label` (that is, ``label ^ 1``).

    For a tensor or array of labels, ``labels ^ 1`` gives the paired classes element-wise.

    Args:
        label (`int`): A MovingShapes class id in ``[0, 8)`` (any integer scalar, e.g. a 0-d tensor, works).

    Raises:
        ValueError: If `label` is not a valid class id.
    """
    try:
        index = operator.index(label)
    except TypeError:
        index = None
    if isinstance(label, bool) or index is None or not 0 <= index < _NUM_CLASSES:
        raise ValueError(f"`label` must be an integer in [0, {_NUM_CLASSES}), got {label!r}.")
    return index ^ 1


@dataclass(frozen=True)
class _DifficultyConfig:
    """Nuisance settings derived from a difficulty level in [0, 1]."""

    level: float

    @property
    def noise_std(self) -> float:
        return 0.08 * self.level

    @property
    def texture_amplitude(self) -> float:
        return 0.15 * self.level

    @property
    def num_blobs(self) -> int:
        return int(4 * self.level + 0.5)

    @property
    def num_distractors(self) -> int:
        # 0 (easy), 1 (medium), 3 (hard)
        return int(3 * self.level + 0.25)

    @property
    def min_contrast(self) -> float:
        return 0.5 - 0.3 * self.level


def _difficulty_level(difficulty: str | float) -> float:
    if isinstance(difficulty, str) and difficulty in DIFFICULTY_LEVELS:
        return DIFFICULTY_LEVELS[difficulty]
    if isinstance(difficulty, Real) and not isinstance(difficulty, bool) and 0.0 <= float(difficulty) <= 1.0:
        return float(difficulty)
    choices = ", ".join(DIFFICULTY_LEVELS)
    raise ValueError(f"`difficulty` must be one of {choices} or a float in [0, 1], got {difficulty!r}.")


def _sample_main(rng, label, num_frames, size, shape_ids, min_contrast) -> tuple[Sprites, np.ndarray]:
    """Sample the class-carrying shape. Each trajectory is symmetric under swapping its start and end point."""
    frames = np.arange(num_frames)
    # Runs from -0.5 to 0.5: reversing time negates it, which is how the pairs swap.
    progress = frames / (num_frames - 1) - 0.5
    rotatable = [k for k in shape_ids if MOVING_SHAPES_SHAPES[k] != "circle"]
    kind = rng.choice(rotatable if label in _ROTATING else shape_ids)
    angle0 = rng.uniform(0.0, 2.0 * np.pi)
    family = label // 2
    # -1 for the first class of each pair (left, up, grow, clockwise), +1 for its time reversal.
    direction = 1.0 if label % 2 else -1.0

    if family in (0, 1):  # horizontal / vertical motion
        radius = rng.uniform(0.15, 0.28) * size
        extent = 1.1 * radius
        room = size - 2.0 * extent
        speed = rng.uniform(0.5, 1.5) * size / 32.0
        travel = min(speed * (num_frames - 1), room)
        lowest = extent + travel / 2.0
        centre = rng.uniform(lowest, max(lowest, size - extent - travel / 2.0))
        along = centre + direction * travel * progress
        across = np.full(num_frames, rng.uniform(extent, size - extent))
        x, y = (along, across) if family == 0 else (across, along)
        radii = np.full(num_frames, radius)
        angles = np.full(num_frames, angle0)
    elif family == 2:  # grow / shrink
        large = rng.uniform(0.22, 0.34) * size
        small = large / rng.uniform(1.5, 2.2)
        radii = (large + small) / 2.0 - direction * (large - small) * progress
        extent = 1.1 * large
        x = np.full(num_frames, rng.uniform(extent, size - extent))
        y = np.full(num_frames, rng.uniform(extent, size - extent))
        angles = np.full(num_frames, angle0)
    else:  # rotate: a growing angle turns clockwise on a y-down screen
        radius = rng.uniform(0.18, 0.3) * size
        extent = 1.1 * radius
        # Below 20 degrees per frame, so the 90-degree symmetry of squares and crosses cannot alias.
        omega = rng.uniform(np.pi / 24.0, np.pi / 10.0)
        angles = angle0 - direction * omega * frames
        x = np.full(num_frames, rng.uniform(extent, size - extent))
        y = np.full(num_frames, rng.uniform(extent, size - extent))
        radii = np.full(num_frames, radius)

    background = rng.uniform(0.0, 0.45, size=3)
    colour = np.minimum(background + rng.uniform(min_contrast, min_contrast + 0.4, size=3), 1.0)
    if rng.random() < 0.5:  # dark shapes on a bright background half of the time
        background, colour = 1.0 - background, 1.0 - colour
    return make_sprite(kind, x, y, radii, angles, colour), background


def _sample_distractor(rng, num_frames, size, shape_ids) -> Sprites:
    """A distractor wobbles, spins and pulsates without net direction.

    Sinusoids with a uniform phase, rotations whose sign is equally likely either way and i.i.d. jitter all have
    time-reversible laws, so distractors carry no information about the class.
    """
    frames = np.arange(num_frames)

    def oscillation(amplitude):
        return amplitude * np.sin(rng.uniform(0.3, 1.0) * frames + rng.uniform(0.0, 2.0 * np.pi))

    x = rng.uniform(0.0, size) + oscillation(rng.uniform(0.05, 0.15) * size)
    y = rng.uniform(0.0, size) + oscillation(rng.uniform(0.05, 0.15) * size)
    jitter = 0.02 * size
    x = x + rng.normal(0.0, jitter, num_frames)
    y = y + rng.normal(0.0, jitter, num_frames)
    radius = rng.uniform(0.06, 0.12) * size * (1.0 + oscillation(rng.uniform(0.0, 0.3)))
    angle = rng.uniform(0.0, 2.0 * np.pi) + rng.uniform(-0.3, 0.3) * frames
    return make_sprite(rng.choice(shape_ids), x, y, radius, angle, rng.uniform(0.0, 1.0, size=3))


def _sample_clip(rng, label, num_frames, size, config: _DifficultyConfig, shape_ids) -> ClipParams:
    main, background = _sample_main(rng, label, num_frames, size, shape_ids, config.min_contrast)
    texture = rng.uniform(-1.0, 1.0, size=(3, 4, 4)) * config.texture_amplitude
    blobs = [
        make_sprite(
            kind=rng.choice(len(MOVING_SHAPES_SHAPES)),
            x=[rng.uniform(0.0, size)],
            y=[rng.uniform(0.0, size)],
            radius=[rng.uniform(0.1, 0.3) * size],
            angle=[rng.uniform(0.0, 2.0 * np.pi)],
            colour=rng.uniform(0.0, 1.0, size=3),
            opacity=rng.uniform(0.15, 0.4),
        )
        for _ in range(config.num_blobs)
    ]
    distractors = [_sample_distractor(rng, num_frames, size, shape_ids) for _ in range(config.num_distractors)]
    return ClipParams(background, texture, blobs, distractors, main)


def _render_split(labels: np.ndarray, seed_sequence, num_frames, size, config, shape_ids) -> np.ndarray:
    pixels = np.empty((len(labels), num_frames, 3, size, size), dtype=np.float32)
    chunk = max(1, _CHUNK_ELEMENTS // (num_frames * size * size))
    # One generator per clip: a clip depends only on (seed, split, index, label, settings), never on chunking.
    rngs = [np.random.default_rng(s) for s in seed_sequence.spawn(len(labels))]
    for start in range(0, len(labels), chunk):
        stop = min(start + chunk, len(labels))
        clip_rngs = rngs[start:stop]
        clips = [
            _sample_clip(rng, int(label), num_frames, size, config, shape_ids)
            for rng, label in zip(clip_rngs, labels[start:stop])
        ]
        render_clips(clips, clip_rngs, num_frames, size, config.noise_std, pixels[start:stop])
    return pixels


def _nested_list_array(array: np.ndarray) -> pa.Array:
    """Zero-copy Arrow nested-list storage of a ``(rows, *shape)`` array, as expected by `datasets.ArrayND`."""
    storage = pa.array(np.ascontiguousarray(array).reshape(-1))
    for depth in range(array.ndim - 1, 0, -1):
        num_lists = int(np.prod(array.shape[:depth]))
        offsets = pa.array(np.arange(num_lists + 1, dtype=np.int32) * array.shape[depth])
        storage = pa.ListArray.from_arrays(offsets, storage)
    return storage


def _to_dataset(pixels: np.ndarray, labels: np.ndarray, features: Features, split: str, fingerprint: str) -> Dataset:
    # Built directly from Arrow arrays: `Dataset.from_dict` would copy the pixels and hash them for a
    # fingerprint, which is slower than generating them. Our fingerprint hashes the generation settings instead.
    pixel_type = features["pixel_values"]()
    rows_per_chunk = max(1, _MAX_CHUNK_VALUES // int(np.prod(pixels.shape[1:])))
    chunks = [
        pa.ExtensionArray.from_storage(pixel_type, _nested_list_array(pixels[start : start + rows_per_chunk]))
        for start in range(0, len(pixels), rows_per_chunk)
    ]
    pixel_column = pa.chunked_array(chunks, type=pixel_type)
    table = pa.Table.from_arrays([pixel_column, pa.array(labels, type=pa.int64())], schema=features.arrow_schema)
    info = DatasetInfo(
        description="MovingShapes: procedural video classification with 8 time-reversed motion classes.",
        features=features,
    )
    dataset = Dataset(InMemoryTable(table), info=info, split=split, fingerprint=fingerprint)
    dataset.set_format("torch")
    return dataset


def _split_sizes(num_videos: int, test_size: float | int) -> tuple[int, int]:
    if isinstance(test_size, bool) or not isinstance(test_size, Real):
        raise ValueError(f"`test_size` must be a fraction in [0, 1) or a number of clips, got {test_size!r}.")
    if isinstance(test_size, (int, np.integer)):
        num_test = int(test_size)
    elif 0.0 <= test_size < 1.0:
        num_test = num_videos * test_size
        # Round to a multiple of the class count when possible, so both splits stay exactly balanced.
        if num_videos % _NUM_CLASSES == 0:
            num_test = _NUM_CLASSES * round(num_test / _NUM_CLASSES)
        num_test = int(round(num_test))
        if test_size > 0:
            num_test = max(num_test, 1)
    else:
        raise ValueError(f"A fractional `test_size` must lie in [0, 1), got {test_size!r}.")
    if not 0 <= num_test < num_videos:
        raise ValueError(f"`test_size`={test_size!r} leaves no training clips out of num_videos={num_videos}.")
    return num_videos - num_test, num_test


def make_moving_shapes(
    num_videos: int,
    num_frames: int = 16,
    image_size: int = 32,
    seed: int = 0,
    difficulty: str | float = "medium",
    test_size: float | int = 0.25,
    shapes: Sequence[str] | None = None,
) -> DatasetDict:
    """Generate the MovingShapes benchmark.

    Each clip shows a main shape (random kind, colour, size, start position and speed) performing the motion of
    its class, over a background whose clutter depends on `difficulty`. Classes come in time-reversed pairs
    (class ``c`` and ``c ^ 1``, see [`paired_class`]): reversing the frames of a clip of class ``c`` gives a clip
    distributed exactly like those of class ``c ^ 1``, so frame order is necessary to exceed 50 % within a pair.

    Difficulty levels (a float interpolates between them; counts are rounded):

    - ``"easy"`` (0.0): uniform background, no noise, no distractors, high contrast.
    - ``"medium"`` (0.5): static texture, two static clutter shapes, one moving distractor, uniform pixel noise
      of standard deviation 0.04.
    - ``"hard"`` (1.0): stronger texture, four clutter shapes, three distractors, lower contrast, noise 0.08.

    Distractors are smaller than the main shape; they wobble, spin and pulsate in ways whose statistics are the
    same forwards and backwards, so they carry no class information.

    Pixels are stored as float32 so that no transform is needed between the dataset and the model (4,000 clips of
    16 x 3 x 32 x 32 take about 0.8 GB of memory); generating them takes seconds.

    Args:
        num_videos (`int`):
            Total number of clips, over both splits.
        num_frames (`int`, *optional*, defaults to 16):
            Frames per clip, at least 2.
        image_size (`int`, *optional*, defaults to 32):
            Height and width of the (square) frames, at least 8.
        seed (`int`, *optional*, defaults to 0):
            Seed of the generator. The same arguments give bit-identical datasets.
        difficulty (`str` or `float`, *optional*, defaults to `"medium"`):
            `"easy"`, `"medium"`, `"hard"` or a level in `[0, 1]`.
        test_size (`float` or `int`, *optional*, defaults to 0.25):
            Fraction (in `[0, 1)`) or number of clips in the `test` split. When `num_videos` is a multiple of 8,
            a fraction is rounded so that both splits hold a multiple of 8 clips.
        shapes (`Sequence[str]`, *optional*):
            Restrict the main shape and the distractors to a subset of [`MOVING_SHAPES_SHAPES`] (static background
            clutter still uses every shape). The rotation classes never use `"circle"`.

    Returns:
        `datasets.DatasetDict`: Splits `train` and `test`, each with columns `pixel_values`
        (`Array4D`, float32 in `[0, 1]`, shape `(num_frames, 3, image_size, image_size)`) and `labels`
        (`ClassLabel` with names [`MOVING_SHAPES_CLASSES`]). Splits are formatted as `"torch"`, so
        `dataset["train"][i]["pixel_values"]` is a float32 tensor and Trainer's default collator stacks them into
        `(batch, frames, channels, height, width)`. Every class appears equally often in a split whose size is a
        multiple of 8 (otherwise counts differ by at most one).

    Example:

    ```python
    >>> from hf_videomoe.data import make_moving_shapes
    >>> dataset = make_moving_shapes(64, num_frames=8, image_size=32, difficulty="easy")
    >>> dataset["train"][0]["pixel_values"].shape
    torch.Size([8, 3, 32, 32])
    ```
    """
    for name, value, minimum in (
        ("num_videos", num_videos, 1),
        ("num_frames", num_frames, 2),
        ("image_size", image_size, 8),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    level = _difficulty_level(difficulty)
    shapes = tuple(MOVING_SHAPES_SHAPES if shapes is None else shapes)
    unknown = [s for s in shapes if s not in MOVING_SHAPES_SHAPES]
    if not shapes or unknown:
        raise ValueError(f"`shapes` must be a non-empty subset of {MOVING_SHAPES_SHAPES}, got {shapes!r}.")
    if set(shapes) == {"circle"}:
        raise ValueError("`shapes` needs a shape other than 'circle': the rotation of a circle is invisible.")
    shape_ids = sorted(MOVING_SHAPES_SHAPES.index(s) for s in set(shapes))
    num_train, num_test = _split_sizes(int(num_videos), test_size)

    config = _DifficultyConfig(level)
    features = Features(
        {
            "pixel_values": Array4D(shape=(num_frames, 3, image_size, image_size), dtype="float32"),
            "labels": ClassLabel(names=list(MOVING_SHAPES_CLASSES)),
        }
    )
    settings = (_GENERATOR_VERSION, num_frames, image_size, int(seed), level, shape_ids)
    splits = {}
    split_seeds = np.random.SeedSequence(int(seed)).spawn(2)
    for split, size, seed_sequence in zip(("train", "test"), (num_train, num_test), split_seeds):
        label_seed, video_seed = seed_sequence.spawn(2)
        labels = np.random.default_rng(label_seed).permutation(np.arange(size) % _NUM_CLASSES)
        pixels = _render_split(labels, video_seed, num_frames, image_size, config, shape_ids)
        fingerprint = Hasher.hash(("moving_shapes", split, size) + settings)
        splits[split] = _to_dataset(pixels, labels, features, split, fingerprint)
    return DatasetDict(splits)
