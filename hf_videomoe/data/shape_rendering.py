"""Rendering of MovingShapes clips (see `hf_videomoe.data.moving_shapes`, which samples what is drawn).

A clip is a stack of sprite layers over a background: anti-aliased shapes given by signed distance functions,
alpha-blended in order (static clutter, distractors, the main shape), then pixel noise. Everything is vectorised
over a chunk of clips. Changing what is drawn changes the benchmark's data: bump ``_GENERATOR_VERSION`` in
`moving_shapes` with it, so that cached datasets are not reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["MOVING_SHAPES_SHAPES", "ClipParams", "Sprites", "make_sprite", "render_clips"]

MOVING_SHAPES_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "rectangle", "cross", "ellipse")
"""Shapes that can be drawn. ``circle`` is never used for the rotation classes since its rotation is invisible."""


@dataclass
class Sprites:
    """Per-frame parameters of one sprite layer for a batch of clips (leading dimension: clip).

    ``x``, ``y``, ``radius`` and ``angle`` have shape ``(clips, frames)``; ``frames`` is 1 for static layers.
    """

    kind: np.ndarray  # (clips,) index into MOVING_SHAPES_SHAPES
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    colour: np.ndarray  # (clips, 3)
    opacity: np.ndarray  # (clips,)

    @classmethod
    def stack(cls, sprites: Sequence["Sprites"]) -> "Sprites":
        """One layer for a chunk of clips, from the same layer of each clip."""
        return cls(**{name: np.stack([getattr(s, name) for s in sprites]) for name in cls.__dataclass_fields__})


@dataclass
class ClipParams:
    """Everything drawn in one clip, as sampled by `moving_shapes` (layers in drawing order: blobs, distractors,
    main)."""

    background: np.ndarray  # (3,) base colour
    texture: np.ndarray  # (3, g, g) low-resolution additive texture
    blobs: list[Sprites]  # static clutter
    distractors: list[Sprites]
    main: Sprites


def make_sprite(kind, x, y, radius, angle, colour, opacity=1.0) -> Sprites:
    """One clip's sprite layer, its parameters cast to the dtypes the renderer computes in."""
    return Sprites(
        kind=np.asarray(kind, dtype=np.int64),
        x=np.asarray(x, dtype=np.float32),
        y=np.asarray(y, dtype=np.float32),
        radius=np.asarray(radius, dtype=np.float32),
        angle=np.asarray(angle, dtype=np.float32),
        colour=np.asarray(colour, dtype=np.float32),
        opacity=np.asarray(opacity, dtype=np.float32),
    )


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to a shape of unit size, in the shape's (rotated, scaled) frame."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(au, av) - 0.75
    if shape == "rectangle":
        return np.maximum(au - 1.0, av - 0.45)
    if shape == "cross":
        return np.minimum(np.maximum(au - 1.0, av - 0.3), np.maximum(au - 0.3, av - 1.0))
    if shape == "ellipse":
        return (np.sqrt(u * u + 4.0 * v * v) - 1.0) * 0.5
    if shape == "triangle":
        # Equilateral, circumradius 1 (apothem 0.5): distance to the farthest of the three edge lines.
        normals = np.pi / 2.0 + 2.0 * np.pi / 3.0 * np.arange(3)
        return np.max([u * np.cos(a) + v * np.sin(a) for a in normals], axis=0) - 0.5
    raise ValueError(f"Unknown shape {shape!r}.")


def _render_alpha(sprites: Sprites, size: int) -> np.ndarray:
    """Anti-aliased coverage of a sprite layer, shape ``(clips, frames, size, size)``.

    A one-pixel soft edge makes sub-pixel motion visible, which matters at low resolution.
    """
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = coords[None, None, None, :] - sprites.x[..., None, None]
    dy = coords[None, None, :, None] - sprites.y[..., None, None]
    radius = np.maximum(sprites.radius, 0.5)[..., None, None]
    cos, sin = np.cos(sprites.angle)[..., None, None] / radius, np.sin(sprites.angle)[..., None, None] / radius
    # Rotating the sampling grid by -angle rotates the shape by +angle (clockwise on a y-down screen).
    u = cos * dx + sin * dy
    v = cos * dy - sin * dx
    alpha = np.empty(u.shape, dtype=np.float32)
    for kind in np.unique(sprites.kind):
        rows = sprites.kind == kind
        distance = _signed_distance(MOVING_SHAPES_SHAPES[kind], u[rows], v[rows])
        distance *= -radius[rows]
        distance += 0.5
        alpha[rows] = np.clip(distance, 0.0, 1.0, out=distance)
    if np.any(sprites.opacity != 1.0):
        alpha *= sprites.opacity[:, None, None, None]
    return alpha


def _paint(canvas: np.ndarray, sprites: Sprites, size: int) -> None:
    """Alpha-blend a sprite layer onto ``canvas`` of shape ``(clips, frames, 3, size, size)`` in place."""
    alpha = _render_alpha(sprites, size)[:, :, None]
    blend = np.subtract(sprites.colour[:, None, :, None, None], canvas)
    blend *= alpha
    canvas += blend


def _interpolation_matrix(size: int, grid: int) -> np.ndarray:
    """Matrix that linearly upsamples ``grid`` samples to ``size`` pixels."""
    positions = np.linspace(0.0, grid - 1.0, size)
    return np.stack([np.interp(positions, np.arange(grid), np.eye(grid)[k]) for k in range(grid)], axis=1)


def render_clips(clips: list[ClipParams], rngs, num_frames: int, size: int, noise_std: float, out) -> None:
    """Draw ``clips`` into ``out``, ``(clips, frames, 3, size, size)`` float32 in [0, 1]: background and texture,
    static clutter, distractors, the main shape, then uniform noise of standard deviation ``noise_std`` drawn from
    each clip's own generator in ``rngs``. Every clip of a chunk has the same number of layers (the difficulty fixes
    them)."""
    upsample = _interpolation_matrix(size, clips[0].texture.shape[-1]).astype(np.float32)
    texture = upsample @ np.stack([c.texture for c in clips]).astype(np.float32) @ upsample.T
    background = np.stack([c.background for c in clips]).astype(np.float32)
    # Static layers are rendered once and broadcast over time.
    static = (background[:, :, None, None] + texture)[:, None]
    for slot in range(len(clips[0].blobs)):
        _paint(static, Sprites.stack([c.blobs[slot] for c in clips]), size)
    canvas = np.repeat(static, num_frames, axis=1)
    for slot in range(len(clips[0].distractors)):
        _paint(canvas, Sprites.stack([c.distractors[slot] for c in clips]), size)
    _paint(canvas, Sprites.stack([c.main for c in clips]), size)
    if noise_std > 0:
        # Uniform rather than Gaussian noise: drawing it is 4x faster and the distribution does not matter here.
        half_width = np.float32(noise_std * np.sqrt(3.0))
        for clip, rng in zip(canvas, rngs):
            noise = rng.random(clip.shape, dtype=np.float32)
            noise -= 0.5
            noise *= 2.0 * half_width
            clip += noise
    np.clip(canvas, 0.0, 1.0, out=out)
