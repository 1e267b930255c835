"""The attack engine shared by every attack of `hf_videomoe.attacks`.

Pieces (all rank-generic: a sample is everything after the batch dimension, frames are dimension 1):

- threat models: L∞ / L2 balls with per-sample norms over all non-batch dimensions, intersected with a box
  (``bounds``, [0, 1] by default) — [`project`], [`random_start`];
- batch-independent, seedable randomness that never touches the global RNG — [`sample_seeds`];
- the temporal adaptive step rule (``"published" | "uniform" | "inverse"``) — [`temporal_step_sizes`];
- per-sample best-iterate tracking with two selection rules — [`BestIterate`];
- the model guard that runs attacks in eval mode with gradients enabled and restores modes, ``requires_grad`` flags and
  ``.grad`` — [`attack_mode`];
- [`Attack`], the base class (validation, ``__call__`` / ``perturb`` / ``as_transform`` / ``settings``), and
  [`GradientAttack`], the projected (sign-)gradient loop every first-order attack except APGD runs on.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..moe import is_moe_model
from .objectives import Objective, ObjectiveContext, model_outputs

NORMS = ("linf", "l2")
TEMPORAL_STEPS = ("published", "uniform", "inverse")
SELECTIONS = ("misclassification", "objective", "last")
DEFAULT_EPS = {"linf": 8 / 255, "l2": 1.0}
"""Default radius per norm: the paper's 8/255 for L∞; 1.0 for L2 (a video has ~10^5-10^6 pixels)."""
PIXEL_RANGE_TOLERANCE = 1e-3
"""Inputs may leave ``bounds`` by this much (resampling overshoot); they are clipped into the box before attacking."""
_MASK64 = (1 << 64) - 1
_FINGERPRINT_SIZE = 1 << 16

__all__ = [
    "Attack",
    "BestIterate",
    "DEFAULT_EPS",
    "GradientAttack",
    "NORMS",
    "NormalizedModel",
    "TEMPORAL_STEPS",
    "attack_mode",
    "project",
    "random_start",
    "sample_seeds",
    "temporal_step_sizes",
    "unwrap_model",
]


# ----------------------------------------------------------------------------------------------------------------------
# Threat model
# ----------------------------------------------------------------------------------------------------------------------


def _per_sample_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(batch,)`` or ``(batch, frames)`` values to broadcast against ``like``."""
    return values.reshape(*values.shape, *([1] * (like.ndim - values.ndim)))


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
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
        factor = (eps / _l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * _per_sample_view(factor, delta)
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


def _per_sample_random(
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
        delta = (2 * _per_sample_random("rand", x, seeds) - 1) * eps
    elif norm == "l2":
        draws = _per_sample_random("randn", x, seeds)
        radius = torch.stack([torch.rand((), generator=_generator(s ^ 0xA5A5, torch.device("cpu"))) for s in seeds])
        direction = draws / _per_sample_view(_l2_norm(draws).clamp_min(1e-12), draws)
        delta = direction * _per_sample_view(radius.to(x.device, x.dtype) * eps, draws)
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
    - ``"inverse"``: ``h_f = 1 + log(1 + sqrt(V_f))``, ``alpha_f = step_size * h_f / mean_f(h_f)`` — frames with large
      accumulated gradients take *larger* steps, and the mean step over the frames of a clip is ``step_size``.
    """
    if rule == "uniform":
        return torch.full_like(accumulated, step_size)
    h = 1 + torch.log1p(accumulated.clamp_min(0).sqrt())
    if rule == "published":
        return step_size / h
    if rule == "inverse":
        return step_size * h / h.mean(dim=1, keepdim=True)
    raise ValueError(f"Unknown temporal_step {rule!r}; expected one of {TEMPORAL_STEPS}.")


# ----------------------------------------------------------------------------------------------------------------------
# Best-iterate tracking
# ----------------------------------------------------------------------------------------------------------------------


class BestIterate:
    """Per-sample best iterate across steps and restarts.

    Selection rules:

    - ``"misclassification"``: a sample once fooled stays fooled — the *first* fooling iterate is kept; among
      iterates that do not fool, the one with the highest objective.
    - ``"objective"``: the iterate with the highest objective (for attacks whose goal is not misclassification).
    - ``"last"``: the latest iterate offered (plain PGD semantics, what adversarial training usually wants).

    Initialised with the clean input, so a sample for which every evaluated iterate failed (NaN objective) comes back
    unchanged.
    """

    def __init__(self, x: torch.Tensor, selection: str):
        if selection not in SELECTIONS:
            raise ValueError(f"Unknown selection {selection!r}; expected one of {SELECTIONS}.")
        self.selection = selection
        self.x = x.detach().clone()
        self.value = torch.full((x.shape[0],), float("-inf"), device=x.device)
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(
        self, index: torch.Tensor | None, x_adv: torch.Tensor, value: torch.Tensor, fooled: torch.Tensor | None
    ) -> None:
        """Offer iterate ``x_adv`` (objective ``value``, success flags ``fooled``) for samples ``index`` (None: all)."""
        value = value.detach().float()
        best_value = self.value if index is None else self.value[index]
        if self.selection == "last":
            better = torch.ones_like(value, dtype=torch.bool)
            fooled = torch.zeros_like(better) if fooled is None else fooled
        elif self.selection == "objective" or fooled is None:
            better = value > best_value
            fooled = torch.zeros_like(better) if fooled is None else fooled
        else:
            was_fooled = self.fooled if index is None else self.fooled[index]
            better = (~was_fooled) & (fooled | (value > best_value))
        # `fooled` ends up describing the kept iterate (with "misclassification" a fooled sample is never replaced).
        if index is None:
            self.x = torch.where(_per_sample_view(better, self.x), x_adv.detach(), self.x)
            self.value = torch.where(better, value, self.value)
            self.fooled = torch.where(better, fooled, self.fooled)
        else:
            chosen = index[better]
            self.x[chosen] = x_adv.detach()[better]
            self.value[chosen] = value[better]
            self.fooled[chosen] = fooled[better]


# ----------------------------------------------------------------------------------------------------------------------
# Model guard
# ----------------------------------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` wrappers: attacks need no gradient synchronisation, and a
    DDP forward whose parameters get no gradient would break the next training step."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


@contextlib.contextmanager
def attack_mode(model: nn.Module, grad: bool = True):
    """Run ``model`` in eval mode with its parameters frozen, and gradients enabled (``grad=True``) even under
    ``torch.no_grad()`` / ``torch.inference_mode()``.

    On exit (also after an exception) every submodule's ``training`` flag and every parameter's ``requires_grad`` flag
    are restored; since parameters do not require grad inside, no ``.grad`` is created or accumulated.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.set_grad_enabled(grad):
            yield model
    finally:
        for m, flag in zip(modules, training):
            m.training = flag
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)


class NormalizedModel(nn.Module):
    """Wrap a model that expects normalised inputs (e.g. transformers' ``VideoMAEForVideoClassification``) so that it
    takes pixels in [0, 1], ``(batch, frames, channels, height, width)``, like the MoE models of this library — then
    ε means the same pixel budget for the dense baseline and the MoE model.

    Args:
        model: the wrapped classifier; called as ``model(pixel_values=normalised)``.
        mean, std: per-channel statistics (defaults: ``model.config.image_mean`` / ``image_std`` if present, else
            ImageNet's).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        config = getattr(model, "config", None)
        mean = mean if mean is not None else getattr(config, "image_mean", None) or [0.485, 0.456, 0.406]
        std = std if std is not None else getattr(config, "image_std", None) or [0.229, 0.224, 0.225]
        self.model = model
        self.config = config
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        return self.model(pixel_values=(pixel_values - self.mean) / self.std, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------------


def _check_real(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                allow_none: bool = False, strict_min: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TypeError(f"`{name}` must be a finite number, got {value!r}.")
    value = float(value)
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        raise ValueError(f"`{name}` must be {'>' if strict_min else '>='} {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}, got {value}.")
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {tuple(choices)}.")
    return value.lower()


def _as_tensor(value, name: str) -> torch.Tensor:
    """Convert what `datasets` / users hand over (tensor, array, list of either, nested lists) to a tensor."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, (list, tuple)):
        if len(value) and all(isinstance(v, torch.Tensor) for v in value):
            return torch.stack(list(value))
        if len(value) and all(isinstance(v, np.ndarray) for v in value):
            return torch.from_numpy(np.stack(value))
        try:
            return torch.as_tensor(np.asarray(value))
        except (ValueError, TypeError) as err:
            raise TypeError(f"Cannot turn `{name}` into a tensor: {err}") from err
    if isinstance(value, numbers.Number):
        return torch.as_tensor(value)
    raise TypeError(f"`{name}` must be a tensor, an array or a list of them, got {type(value).__name__}.")


# ----------------------------------------------------------------------------------------------------------------------
# Attack base class
# ----------------------------------------------------------------------------------------------------------------------


class Attack:
    """Base class of every attack: threat model, validation, the model guard and the public interface.

    An attack is a callable ``(model, batch) -> batch``. ``batch`` is a mapping with ``pixel_values`` (float,
    ``(batch, frames, channels, height, width)``, in ``bounds``) and ``labels`` (``(batch,)`` ints); the result is a
    *new* dict (other keys copied) whose ``pixel_values`` are adversarial. Inputs are never modified; the model is run
    in eval mode with frozen parameters and handed back with its modes, ``requires_grad`` flags and ``.grad``
    unchanged, so attacks can run inside a training step with the current weights.

    Subclasses implement [`_attack`](Attack._attack).

    Args:
        eps: radius of the threat model (``None``: 8/255 for L∞, 1.0 for L2).
        steps: number of iterations (gradient steps, or queries for Square).
        step_size: absolute step α in pixel units (``None``: the attack's default, usually ``2.5 * eps / steps``).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a random point of the threat model.
        seed: seed of all randomness (``None``: fresh randomness on every call — what adversarial training wants).
            Random numbers come from generators seeded per sample from ``seed`` and the sample's content, never from
            the global RNG.
        restarts: independent runs; each sample keeps its best result over all of them.
        targeted: targeted mode — push predictions toward ``target_labels`` (batch key ``"target_labels"``; by
            default the least-likely clean class).
        early_stop: stop updating (and forwarding) samples that are already fooled.
        bounds: the box ``(low, high)`` of valid inputs, ``(0, 1)`` by default; ``None`` for models whose inputs are
            not pixels in a box (no range check, no clipping).
        progress: show a tqdm progress bar.
    """

    name: ClassVar[str] = "attack"
    requires_moe: ClassVar[bool] = False
    requires_labels: ClassVar[bool] = True
    supported_norms: ClassVar[tuple[str, ...]] = NORMS
    supports_targeted: ClassVar[bool] = True
    default_steps: ClassVar[int] = 10
    fixed_kwargs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        eps: float | None = None,
        steps: int | None = None,
        step_size: float | None = None,
        norm: str = "linf",
        random_start: bool = True,
        seed: int | None = 0,
        restarts: int = 1,
        targeted: bool = False,
        early_stop: bool = False,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        progress: bool = False,
    ):
        self.norm = _check_choice("norm", norm, NORMS)
        if self.norm not in self.supported_norms:
            raise ValueError(f"{self.name} supports norm {' / '.join(map(repr, self.supported_norms))} only, got "
                             f"{norm!r}.")
        self.eps = _check_real("eps", DEFAULT_EPS[self.norm] if eps is None else eps, minimum=0.0)
        self.steps = _check_int("steps", self.default_steps if steps is None else steps, 0)
        self._step_size = _check_real("step_size", step_size, minimum=0.0, allow_none=True, strict_min=True)
        self.random_start = bool(random_start)
        if seed is not None:
            _check_int("seed", seed, 0)
        self.seed = seed
        self.restarts = _check_int("restarts", restarts, 1)
        self.targeted = bool(targeted)
        if self.targeted and not self.supports_targeted:
            raise ValueError(f"{self.name} has no targeted mode (its objective is not a classification loss).")
        self.early_stop = bool(early_stop)
        if bounds is not None:
            if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
                raise ValueError(f"`bounds` must be a pair (low, high) with low < high, or None; got {bounds!r}.")
            bounds = (float(bounds[0]), float(bounds[1]))
        self.bounds = bounds
        if self.norm == "linf" and bounds is not None and self.eps > bounds[1] - bounds[0]:
            raise ValueError(
                f"`eps`={self.eps!r} is an L∞ budget larger than the whole pixel range {tuple(bounds)}: pixel values "
                "are in [0, 1], so write budgets in that unit (8/255 ≈ 0.0314, not 8)."
            )
        self.progress = bool(progress)

    # -- properties ----------------------------------------------------------------------------------------------------

    @property
    def step_size(self) -> float | None:
        """The absolute step size α (per-frame steps are scaled from it by the temporal rule)."""
        if self._step_size is not None:
            return self._step_size
        return self._default_step_size()

    def _default_step_size(self) -> float | None:
        return 2.5 * self.eps / max(self.steps, 1)

    @classmethod
    def accepted_kwargs(cls) -> list[str]:
        """Keyword arguments this attack's constructor takes (following ``**kwargs`` up the class hierarchy)."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            passes_on = False
            for param in inspect.signature(init).parameters.values():
                if param.kind == param.KEYWORD_ONLY and param.name not in names:
                    names.append(param.name)
                passes_on |= param.kind == param.VAR_KEYWORD
            if not passes_on:
                break
        return [n for n in names if n not in cls.fixed_kwargs]

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable settings (name, threat model, schedule, weights, ...) for reports and model cards."""
        out = {
            "name": self.name,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "seed": self.seed,
            "restarts": self.restarts,
            "targeted": self.targeted,
            "early_stop": self.early_stop,
            "bounds": list(self.bounds) if self.bounds is not None else None,
        }
        out.update(self._extra_settings())
        return out

    def _extra_settings(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        keys = ("norm", "eps", "steps", "step_size", "seed")
        s = self.settings()
        inner = ", ".join(f"{k}={s[k]:.6g}" if isinstance(s[k], float) else f"{k}={s[k]!r}" for k in keys)
        return f"{type(self).__name__}(name={self.name!r}, {inner})"

    # -- public interface ----------------------------------------------------------------------------------------------

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Attack a batch dict (``pixel_values``, ``labels``, optionally ``target_labels``); return a new dict."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"{self.name} expects a batch mapping with 'pixel_values' and 'labels', got "
                            f"{type(batch).__name__}; use `attack.perturb(model, pixel_values, labels)` for tensors.")
        if "pixel_values" not in batch:
            raise ValueError(f"The batch has no 'pixel_values' (keys: {sorted(batch)}).")
        adv = self.perturb(model, batch["pixel_values"], batch.get("labels"), target_labels=batch.get("target_labels"))
        out = dict(batch)
        out["pixel_values"] = adv
        return out

    def perturb(
        self,
        model: nn.Module,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | Sequence[int] | None = None,
        *,
        target_labels: torch.Tensor | Sequence[int] | None = None,
        clean_outputs: tuple[torch.Tensor, Sequence[torch.Tensor] | None] | None = None,
    ) -> torch.Tensor:
        """Return adversarial ``pixel_values`` (a new tensor of the same shape, dtype and device).

        Args:
            model: the classifier under attack (an MoE model of this library, a transformers classifier or any module
                mapping ``pixel_values`` to logits). DDP / DataParallel wrappers are stripped.
            pixel_values: ``(batch, frames, channels, height, width)`` float tensor in ``bounds``.
            labels: ``(batch,)`` true labels (optional for router-only attacks).
            target_labels: ``(batch,)`` targets in targeted mode (default: least-likely clean class).
            clean_outputs: ``(logits, router_logits)`` of ``model`` on ``pixel_values`` in eval mode, when the caller
                already has them (a trainer sharing its clean pass): the attack then skips its own clean forward.
                Attacks that need no clean quantities ignore it.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.name} expects a torch.nn.Module, got {type(model).__name__}.")
        model = unwrap_model(model)
        self._check_model(model)
        x = self._check_pixel_values(pixel_values)
        labels = self._check_labels(model, labels, x, "labels", required=self.requires_labels)
        if self.targeted:
            target_labels = self._check_labels(model, target_labels, x, "target_labels", required=False)
        else:
            target_labels = None
        if self.norm == "l2" and self.bounds is not None and x.shape[0]:
            diameter = (float(self.bounds[1]) - float(self.bounds[0])) * math.sqrt(x[0].numel())
            if self.eps > diameter:
                raise ValueError(
                    f"`eps`={self.eps!r} is an L2 budget larger than the diameter {diameter:.4g} of the pixel box for "
                    f"clips of shape {tuple(x.shape[1:])}: every clip would be reachable from every other."
                )
        if x.shape[0] == 0 or self.eps == 0 or (self.steps == 0 and not self.random_start):
            return pixel_values.detach().clone()

        device = _model_device(model, x.device)
        work = x.detach().to(device=device, dtype=torch.float32)
        if self.bounds is not None:
            work = work.clamp(*self.bounds)
        labels = None if labels is None else labels.to(device)
        with attack_mode(model, grad=True):
            work = work.clone()
            if self.targeted and target_labels is None:
                with torch.no_grad():  # least-likely clean class other than the true one
                    logits = model_outputs(model, work)[0].float()
                    if labels is not None:
                        logits = logits.scatter(1, labels[:, None], float("inf"))
                    target_labels = logits.argmin(dim=-1)
            elif target_labels is not None:
                target_labels = target_labels.to(device)
            if self.targeted and labels is not None and (target_labels == labels).any():
                raise ValueError("Some target_labels equal the true labels; a targeted attack needs a different class.")
            adv = self._attack(model, work, labels, target_labels, clean_outputs=_check_clean_outputs(clean_outputs, x))
        adv = adv.detach()
        if self.bounds is not None:
            adv = adv.clamp(*self.bounds)
        return adv.to(device=pixel_values.device, dtype=pixel_values.dtype)

    def as_transform(
        self,
        model: nn.Module,
        *,
        pixel_key: str = "pixel_values",
        label_key: str = "labels",
        output_device: str | torch.device = "cpu",
    ) -> Callable[[dict], dict]:
        """A function for ``datasets.Dataset.with_transform`` / ``set_transform`` that attacks each batch on the fly.

        It receives a batch dict as ``datasets`` hands it over (``pixel_values`` as a tensor, an array, a list of
        tensors / arrays or nested lists; ``labels`` as a list of ints or a tensor), stacks it, moves it to the model's
        device, attacks it and returns the batch with ``pixel_values`` replaced by a list of adversarial ``(frames,
        channels, height, width)`` tensors on ``output_device`` (one per row, as ``datasets`` expects). Other columns
        are passed through; a ``label`` column is used when there is no ``labels`` column.
        """
        attack = self

        def transform(batch: dict) -> dict:
            if pixel_key not in batch:
                raise ValueError(f"The batch has no {pixel_key!r} column (columns: {sorted(batch)}).")
            pixels = _as_tensor(batch[pixel_key], pixel_key)
            if pixels.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                pixels = pixels.float()  # python-formatted rows come back as float64; integer frames are rejected below
            key = label_key if label_key in batch else ("label" if "label" in batch else None)
            labels = _as_tensor(batch[key], key) if key is not None else None
            targets = _as_tensor(batch["target_labels"], "target_labels") if "target_labels" in batch else None
            device = _model_device(unwrap_model(model), pixels.device)
            adv = attack.perturb(model, pixels.to(device), None if labels is None else labels.to(device),
                                 target_labels=None if targets is None else targets.to(device))
            out = dict(batch)
            out[pixel_key] = list(adv.to(output_device).unbind(0))
            return out

        transform.attack = attack  # type: ignore[attr-defined]
        return transform

    # -- checks --------------------------------------------------------------------------------------------------------

    def _check_model(self, model: nn.Module) -> None:
        if self.requires_moe and not is_moe_model(model):
            from .registry import DENSE_ATTACKS  # local import: registry imports the attack classes

            raise ValueError(
                f"The {self.name!r} attack targets routers / experts and needs a Mixture-of-Experts model, but "
                f"{type(model).__name__} has no MoE layer. Attacks that apply to dense models: "
                f"{', '.join(DENSE_ATTACKS)}. (Upcycle a dense model with `from_dense` to attack its routers.)"
            )

    def _check_pixel_values(self, pixel_values) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor (batch, frames, channels, height, width), got "
                            f"{type(pixel_values).__name__}.")
        if not pixel_values.is_floating_point():
            raise TypeError(f"`pixel_values` must be a float tensor in [0, 1], got dtype {pixel_values.dtype} "
                            "(divide uint8 frames by 255).")
        if pixel_values.ndim != 5:
            raise ValueError(f"`pixel_values` must have rank 5, (batch, frames, channels, height, width); got shape "
                             f"{tuple(pixel_values.shape)}.")
        if pixel_values.numel():
            finite = torch.isfinite(pixel_values).all()
            if not finite:
                raise ValueError("`pixel_values` contains NaN or infinite values.")
            if self.bounds is not None:
                low, high = pixel_values.detach().aminmax()
                lo, hi = self.bounds
                if low < lo - PIXEL_RANGE_TOLERANCE or high > hi + PIXEL_RANGE_TOLERANCE:
                    raise ValueError(
                        f"`pixel_values` must lie in [{lo:g}, {hi:g}] (raw pixels; the MoE models normalise inside), "
                        f"got values in [{float(low):.4g}, {float(high):.4g}]. For a model that takes normalised "
                        "inputs wrap it in `hf_videomoe.attacks.NormalizedModel`, or pass `bounds=None`."
                    )
        return pixel_values

    def _check_labels(self, model, labels, x: torch.Tensor, name: str, required: bool) -> torch.Tensor | None:
        if labels is None:
            if required:
                raise ValueError(f"The {self.name!r} attack needs `{name}` (a (batch,) tensor of class indices).")
            return None
        labels = _as_tensor(labels, name)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"`{name}` must hold integer class indices, got dtype {labels.dtype}.")
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"`{name}` must have shape ({x.shape[0]},) to match `pixel_values`, got "
                             f"{tuple(labels.shape)}.")
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if labels.numel():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or (isinstance(num_labels, int) and num_labels > 0 and high >= num_labels):
                bound = f"[0, {num_labels})" if isinstance(num_labels, int) else "non-negative"
                raise ValueError(f"`{name}` must be class indices in {bound}, got values in [{low}, {high}].")
        return labels.long()

    # -- to implement --------------------------------------------------------------------------------------------------

    def _attack(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        target_labels: torch.Tensor | None,
        clean_outputs: tuple[torch.Tensor, Sequence[torch.Tensor] | None] | None = None,
    ) -> torch.Tensor:
        """Return adversarial examples for the validated float32 input ``x`` (already on the model's device, inside
        [`attack_mode`]). Must not modify ``x``. ``clean_outputs``: see [`perturb`]."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------------------------------

    def _base_seed(self) -> int:
        return secrets.randbits(63) if self.seed is None else int(self.seed)

    def _fooled(self, logits: torch.Tensor | None, labels, target_labels) -> torch.Tensor | None:
        if logits is None:
            return None
        pred = logits.detach().argmax(dim=-1)
        if self.targeted:
            return pred == target_labels
        if labels is None:
            return None
        return pred != labels

    def _progress(self, total: int):
        return tqdm(total=total, desc=self.name, disable=not self.progress, leave=False)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return fallback


# ----------------------------------------------------------------------------------------------------------------------
# Projected gradient engine
# ----------------------------------------------------------------------------------------------------------------------


def _check_clean_outputs(clean_outputs, x: torch.Tensor):
    if clean_outputs is None:
        return None
    if not isinstance(clean_outputs, (tuple, list)) or len(clean_outputs) != 2:
        raise TypeError("`clean_outputs` must be a `(logits, router_logits)` pair.")
    logits, router_logits = clean_outputs
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"`clean_outputs` logits must be a (batch={x.shape[0]}, num_labels) tensor, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}.")
    return logits.detach(), None if router_logits is None else tuple(r.detach() for r in router_logits)


class GradientAttack(Attack):
    """Projected gradient ascent on an [`Objective`], with temporal adaptive steps, best-iterate tracking, early stop
    and restarts. FGSM, PGD and all the paper's attacks are this loop with different objectives and defaults.

    Each step costs one forward and one backward pass (w.r.t. the input only); the clean quantities the objective
    needs are computed once per call, and one extra forward without gradient evaluates the last iterate.

    L∞ steps move along ``sign(grad)``, L2 steps along ``grad / ||grad||_2`` (per sample); frame ``f`` of sample ``b``
    moves by ``alpha[b, f]`` from [`temporal_step_sizes`], where ``V[b, f] <- beta * V[b, f] + ||grad_{x_f}||_2``.

    Args (besides [`Attack`]'s):
        temporal_step: ``"published"``, ``"uniform"`` or ``"inverse"`` (see [`temporal_step_sizes`]).
        temporal_momentum: β of the accumulator V.
        selection: which iterate is returned per sample: ``"misclassification"`` (first fooling iterate, else the
            highest objective), ``"objective"`` (highest objective) or ``"last"`` (the final iterate — plain PGD, the
            usual choice for adversarial training). Default: the attack's own (see each attack).
    """

    default_temporal_step: ClassVar[str] = "uniform"
    default_selection: ClassVar[str] = "misclassification"

    def __init__(
        self,
        *,
        temporal_step: str | None = None,
        temporal_momentum: float = 0.9,
        selection: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.temporal_step = _check_choice(
            "temporal_step", self.default_temporal_step if temporal_step is None else temporal_step, TEMPORAL_STEPS
        )
        self.temporal_momentum = _check_real("temporal_momentum", temporal_momentum, minimum=0.0, maximum=1.0)
        self.selection = _check_choice(
            "selection", self.default_selection if selection is None else selection, SELECTIONS
        )
        objective = self.build_objective()  # validates weights early
        if self.early_stop and not (objective.requires_labels or self.targeted):
            raise ValueError(f"early_stop stops samples once they are misclassified, but {self.name!r} has no "
                             "classification loss (it maximises a routing objective); leave early_stop off.")
        if self.selection == "misclassification" and not objective.requires_labels and not self.targeted:
            raise ValueError(f"{self.name!r} has no classification loss, so it cannot select iterates by "
                             "misclassification; use selection='objective'.")

    def build_objective(self) -> Objective:
        """The objective this attack maximises."""
        raise NotImplementedError

    def _extra_settings(self) -> dict[str, Any]:
        return {
            "temporal_step": self.temporal_step,
            "temporal_momentum": self.temporal_momentum,
            "selection": self.selection,
            "objective": self.build_objective().describe(),
        }

    def _attack(self, model, x, labels, target_labels, clean_outputs=None):
        objective = self.build_objective()
        ctx = objective.prepare(model, x, labels, target_labels, clean_outputs=clean_outputs)
        classifies = objective.requires_labels or self.targeted
        # With "last", each restart keeps its final iterates and restarts are compared like "misclassification".
        merge_rule = self.selection
        if merge_rule == "last":
            merge_rule = "misclassification" if classifies else "objective"
        tracker = BestIterate(x, merge_rule)
        base_seed = self._base_seed()
        with self._progress(self.restarts * self.steps) as bar:
            for restart in range(self.restarts):
                active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                if self.early_stop or (restart > 0 and merge_rule == "misclassification"):
                    active &= ~tracker.fooled  # fooled samples are done
                if not active.any():
                    break
                if self.random_start:
                    delta = random_start(x, self.eps, self.norm, sample_seeds(x, base_seed, restart), self.bounds)
                else:
                    delta = torch.zeros_like(x)
                if self.selection == "last":
                    run = BestIterate(x, "last")
                    self._run(model, x, ctx, objective, delta, active, run, bar)
                    tracker.update(None, run.x, torch.where(active, run.value, float("-inf")), run.fooled & active)
                else:
                    self._run(model, x, ctx, objective, delta, active, tracker, bar)
        return tracker.x

    def _run(self, model, x, ctx: ObjectiveContext, objective: Objective, delta, active, tracker: BestIterate, bar):
        batch, frames = x.shape[0], x.shape[1]
        accumulated = x.new_zeros(batch, frames)
        step_size = self.step_size
        for step in range(self.steps + 1):
            index = None if bool(active.all()) else active.nonzero().squeeze(1)
            if index is not None and index.numel() == 0:
                break
            sub_ctx = ctx if index is None else ctx.select(index)
            x_sub = x if index is None else x[index]
            delta_sub = delta if index is None else delta[index]
            x_adv = (x_sub + delta_sub).detach()
            last = step == self.steps
            if last:
                with torch.no_grad():
                    out = objective(model, x_adv, sub_ctx)
            else:
                x_adv.requires_grad_(True)
                out = objective(model, x_adv, sub_ctx)
                (grad,) = torch.autograd.grad(out.value.sum(), x_adv)
            fooled = self._fooled(out.logits, sub_ctx.labels, sub_ctx.target_labels)
            tracker.update(index, x_adv, out.value, fooled)
            if last:
                break

            grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
            acc_sub = accumulated if index is None else accumulated[index]
            if self.temporal_step != "uniform":
                acc_sub = self.temporal_momentum * acc_sub + grad.reshape(grad.shape[0], frames, -1).norm(dim=2)
            alpha = temporal_step_sizes(acc_sub, step_size, self.temporal_step)
            if self.norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / _per_sample_view(_l2_norm(grad).clamp_min(1e-12), grad)
            new_delta = project(delta_sub + _per_sample_view(alpha, grad) * direction, x_sub, self.eps, self.norm,
                                self.bounds)
            if index is None:
                delta, accumulated = new_delta, acc_sub
            else:
                delta[index] = new_delta
                accumulated[index] = acc_sub
            if self.early_stop and fooled is not None:
                if index is None:
                    active = active & ~fooled
                else:
                    active[index[fooled]] = False
            bar.update(1)
