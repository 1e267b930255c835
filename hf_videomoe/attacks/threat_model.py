"""Threat models and their randomness, shared by every attack (all rank-generic: a sample is everything after the
batch dimension, frames are dimension 1).

- L∞ / L2 balls with per-sample norms over all non-batch dimensions, intersected with a box (``bounds``, [0, 1] by
  default) — [`project`], [`random_start`];
- batch-independent, seedable randomness that never touches the global RNG — [`sample_seeds`];
- the temporal adaptive step rules (``"normalized" | "published" | "uniform" | "inverse"``) — [`temporal_step_sizes`].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

NORMS = ("linf", "l2")
TEMPORAL_STEPS = ("normalized", "published", "uniform", "inverse")
DEFAULT_EPS = {"linf": 8 / 255, "l2": 1.0}
"""Default radius per norm: the paper's 8/255 for L∞; 1.0 for L2 (a video has ~10^5-10^6 pixels)."""
PIXEL_RANGE_TOLERANCE = 1e-3
"""Inputs may leave ``bounds`` by this much (resampling overshoot); they are clipped into the box before attacking."""
_MASK64 = (1 << 64) - 1
_FINGERPRINT_SIZE = 1 << 16


__all__ = [
    "DEFAULT_EPS",
    "NORMS",
    "PIXEL_RANGE_TOLERANCE",
    "TEMPORAL_STEPS",
    "l2_norm",
    "per_sample_random",
    "per_sample_view",
    "project",
    "random_start",
    "sample_seeds",
    "temporal_step_sizes",
]


def per_sample_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(batch,)`` or ``(batch, frames)`` values to broadcast against ``like``."""
    return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim)))


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def project(
    delta: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    norm: str,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps`` (per sample), then into the box.

    L∞: clamp every element to ``[-eps, eps]``; L2: rescale each sample whose norm (over all non-batch dimensions)
    exceeds ``eps``. The box step ``clamp(x + delta, *bounds) - x`` only shrinks ``|delta|`` element-wise (``x`` is in
    the box), so the result lies in the intersection.
    """
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        factor = (eps / l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * per_sample_view(factor, delta)
    else:
        raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
    if bounds is not None:
        delta = (x + delta).clamp(bounds[0], bounds[1]) - x
    return delta


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=16)
def _fingerprint_plan(num_features: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0x5EED)
    if num_features <= _FINGERPRINT_SIZE:
        index = torch.arange(num_features)
    else:
        index = torch.randperm(num_features, generator=generator)[:_FINGERPRINT_SIZE]
    weights = torch.randint(1, 1 << 20, (index.numel(),), generator=generator, dtype=torch.long)
    return index.to(device), weights.to(device)


def _fingerprint(x: torch.Tensor) -> list[int]:
    """A per-sample integer summary of the clip content, exact and independent of the rest of the batch."""
    flat = x.detach().reshape(x.shape[0], -1)
    index, weights = _fingerprint_plan(flat.shape[1], str(flat.device))
    quantised = torch.round(flat.index_select(1, index).float() * 255).long()
    return (quantised * weights).sum(dim=1).tolist()


def sample_seeds(x: torch.Tensor, seed: int, stream: int = 0) -> list[int]:
    """One 63-bit seed per sample, derived from ``seed``, a ``stream`` number (restart index, ...) and the sample's
    content.

    Because each seed depends only on the sample itself, the random start of a clip is the same whatever batch it is
    in, at whatever position, on any number of devices: attacking a batch equals attacking its samples one by one.
    Two clips with (nearly) identical content share their noise, which is harmless.
    """
    base = _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(stream) & _MASK64))
    return [_splitmix64(base ^ (fp & _MASK64)) & ((1 << 63) - 1) for fp in _fingerprint(x)]


def _generator(seed: int, device: torch.device) -> torch.Generator:
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:  # devices without their own generator: draw on the CPU
        return torch.Generator().manual_seed(seed)


def per_sample_random(
    kind: str, x: torch.Tensor, seeds: Sequence[int], shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Draw ``rand``/``randn`` per sample from its own generator (batch-independent, global RNG untouched)."""
    shape = tuple(x.shape[1:]) if shape is None else tuple(shape)
    draws = []
    for seed in seeds:
        generator = _generator(seed, x.device)
        fn = torch.rand if kind == "rand" else torch.randn
        draws.append(fn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device))
    return torch.stack(draws).to(x.dtype)


def random_start(
    x: torch.Tensor,
    eps: float,
    norm: str,
    seeds: Sequence[int],
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """A random perturbation in the threat model, one generator per sample.

    L∞: uniform in ``[-eps, eps]`` per element. L2: a uniformly random direction (normalised Gaussian) times a radius
    ``eps * u``, ``u ~ U(0, 1)``. Then projected into the box.
    """
    if norm == "linf":
        delta = (2 * per_sample_random("rand", x, seeds) - 1) * eps
    elif norm == "l2":
        draws = per_sample_random("randn", x, seeds)
        radius = torch.stack([torch.rand((), generator=_generator(s ^ 0xA5A5, torch.device("cpu"))) for s in seeds])
        direction = draws / per_sample_view(l2_norm(draws).clamp_min(1e-12), draws)
        delta = direction * per_sample_view(radius.to(x.device, x.dtype) * eps, draws)
    else:
        raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
    return project(delta, x, eps, norm, bounds)


# ----------------------------------------------------------------------------------------------------------------------
# Temporal adaptive steps
# ----------------------------------------------------------------------------------------------------------------------


def temporal_step_sizes(accumulated: torch.Tensor, step_size: float, rule: str) -> torch.Tensor:
    """Per-frame step sizes ``(batch, frames)`` from the accumulated frame-gradient norms ``V`` (same shape).

    - ``"published"`` (the paper): ``alpha_f = step_size / (1 + log(1 + sqrt(V_f)))`` — frames with large accumulated
      gradients take *smaller* steps; every ``alpha_f <= step_size``.
    - ``"uniform"``: ``alpha_f = step_size`` (plain PGD).
    - ``"normalized"``: the published rule rescaled per clip so that the mean step over its frames is ``step_size``:
      ``alpha_f = step_size * (1 / h_f) / mean_f(1 / h_f)``. Frames with large accumulated gradients still take the
      smaller steps, but the clip moves as far as a uniform step would: the published rule divides a base step sized
      for uniform steps, so its examples end far inside the ε-ball (MSE(δ)/ε² ≈ 0.31 vs 0.74 for PGD at 2 steps,
      docs/RESULTS.md §3). The default of the paper's attacks.
    - ``"inverse"``: ``h_f = 1 + log(1 + sqrt(V_f))``, ``alpha_f = step_size * h_f / mean_f(h_f)`` — frames with large
      accumulated gradients take *larger* steps, and the mean step over the frames of a clip is ``step_size``.
    """
    if rule == "uniform":
        return torch.full_like(accumulated, step_size)
    h = 1 + torch.log1p(accumulated.clamp_min(0).sqrt())
    if rule == "published":
        return step_size / h
    if rule == "normalized":
        inverse_h = 1 / h
        return step_size * inverse_h / inverse_h.mean(dim=1, keepdim=True)
    if rule == "inverse":
        return step_size * h / h.mean(dim=1, keepdim=True)
    raise ValueError(f"Unknown temporal_step {rule!r}; expected one of {TEMPORAL_STEPS}.")
