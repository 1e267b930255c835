"""[`Attack`], the base class of every attack (validation, ``__call__`` / ``perturb`` / ``as_transform`` /
``settings``)."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from .best_iterate import SELECTIONS, BestIterate
from .model_guard import attack_mode, model_outputs, unwrap_model
from .sample_budgets import perturb_per_sample_eps
from .threat_model import DEFAULT_EPS, NORMS
from .validation import (
    as_tensor,
    check_choice,
    check_clean_outputs,
    check_int,
    check_l2_budget,
    check_labels,
    check_moe_model,
    check_pixel_values,
    check_real,
)

__all__ = ["Attack", "BestIterate", "SELECTIONS"]


_SHAPE_AND_EXAMPLE = """

    Shape:
        - pixel_values: ``(batch, frames, channels, height, width)``, float in ``bounds`` ([0, 1] by default); any
          layout whose first dimension is the batch and second the frames works.
        - labels: ``(batch,)`` class indices.
        - output: the adversarial ``pixel_values``, same shape and dtype, inside the ε-ball around the input and
          inside the box.

    Example:

    ```python
    >>> from hf_videomoe.attacks import build_attack
    >>> attack = build_attack("{name}", eps=8 / 255, steps=10)
    >>> adv_batch = attack({model}, {{"pixel_values": pixel_values, "labels": labels}})  # doctest: +SKIP
    >>> adv_pixels = attack.perturb({model}, pixel_values, labels)  # doctest: +SKIP
    ```
"""


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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every named attack documents the same interface the same way (torchattacks-style), so the shared sections
        # are written once here rather than copied into a dozen docstrings.
        if "name" in cls.__dict__ and cls.__doc__ and "Shape:" not in cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + _SHAPE_AND_EXAMPLE.format(
                name=cls.name, model="moe_model" if cls.requires_moe else "model"
            )

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
        self.norm = check_choice("norm", norm, NORMS)
        if self.norm not in self.supported_norms:
            raise ValueError(
                f"{self.name} supports norm {' / '.join(map(repr, self.supported_norms))} only, got {norm!r}."
            )
        self.eps = check_real("eps", DEFAULT_EPS[self.norm] if eps is None else eps, minimum=0.0)
        self.steps = check_int("steps", self.default_steps if steps is None else steps, 0)
        self._step_size = check_real("step_size", step_size, minimum=0.0, allow_none=True, strict_min=True)
        self.random_start = bool(random_start)
        if seed is not None:
            check_int("seed", seed, 0)
        self.seed = seed
        self.restarts = check_int("restarts", restarts, 1)
        self.targeted = bool(targeted)
        if self.targeted and not self.supports_targeted:
            raise ValueError(f"{self.name} has no targeted mode (its objective is not a classification loss).")
        self.early_stop = bool(early_stop)
        if bounds is not None:
            if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
                raise ValueError(f"`bounds` must be a pair (low, high) with low < high, or None; got {bounds!r}.")
            bounds = (float(bounds[0]), float(bounds[1]))
        self.bounds = bounds
        self.check_budget()
        self.progress = bool(progress)

    def check_budget(self) -> None:
        """Raise a `ValueError` when ``eps`` is an L∞ budget wider than the box ``bounds`` (a budget written in 0-255
        pixel units). The constructor runs it; so does per-clip [`perturb`] on each copy whose ``eps`` it sets."""
        bounds = self.bounds
        if self.norm == "linf" and bounds is not None and self.eps > bounds[1] - bounds[0]:
            raise ValueError(
                f"`eps`={self.eps!r} is an L∞ budget larger than the whole pixel range {tuple(bounds)}: pixel values "
                "are in [0, 1], so write budgets in that unit (8/255 ≈ 0.0314, not 8)."
            )

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
            raise TypeError(
                f"{self.name} expects a batch mapping with 'pixel_values' and 'labels', got "
                f"{type(batch).__name__}; use `attack.perturb(model, pixel_values, labels)` for tensors."
            )
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
        eps: float | torch.Tensor | Sequence[float] | None = None,
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
            eps: a budget per clip, ``(batch,)`` (or one number), instead of the attack's ``eps``: clips are grouped
                by budget and each group is attacked with it (every clip draws its randomness from itself, so a clip
                gets the example it would get alone). Default step sizes follow each budget; an explicit
                ``step_size`` stays as given. Budgets are read as Python floats: a float32 tensor carries its
                rounded values (8/255 in float32 is not the float 8/255), so pass float64 to match a scalar exactly.
        """
        if eps is not None:
            return perturb_per_sample_eps(
                self, model, pixel_values, labels, eps, target_labels=target_labels, clean_outputs=clean_outputs
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.name} expects a torch.nn.Module, got {type(model).__name__}.")
        model = unwrap_model(model)
        if self.requires_moe:
            check_moe_model(model, self.name)
        x = check_pixel_values(pixel_values, self.bounds)
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        labels = check_labels(
            labels, x.shape[0], "labels", attack_name=self.name, required=self.requires_labels, num_labels=num_labels
        )
        if self.targeted:
            target_labels = check_labels(
                target_labels, x.shape[0], "target_labels", attack_name=self.name, required=False, num_labels=num_labels
            )
        else:
            target_labels = None
        if self.norm == "l2" and self.bounds is not None and x.shape[0]:
            check_l2_budget(self.eps, self.bounds, tuple(x.shape[1:]))
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
            adv = self._attack(
                model, work, labels, target_labels, clean_outputs=check_clean_outputs(clean_outputs, x.shape[0])
            )
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
        dataset=None,
    ) -> Callable[[dict], dict]:
        """A function for ``datasets.Dataset.with_transform`` / ``set_transform`` that attacks each batch on the fly.

        It receives a batch dict as ``datasets`` hands it over (``pixel_values`` as a tensor, an array, a list of
        tensors / arrays or nested lists; ``labels`` as a list of ints or a tensor), stacks it, moves it to the model's
        device, attacks it and returns the batch with ``pixel_values`` replaced by a list of adversarial ``(frames,
        channels, height, width)`` tensors on ``output_device`` (one per row, as ``datasets`` expects). Other columns
        are passed through; a ``label`` column is used when there is no ``labels`` column.

        ``dataset``: a dataset whose own transform makes ``pixel_values`` (e.g. the video decoding of
        `load_video_folder` or `decode_video_dataset`). ``with_transform`` replaces a dataset's transform, so pass
        the dataset here and the attack runs after its transform::

            adversarial = videos.with_transform(attack.as_transform(model, dataset=videos))
        """
        attack = self
        fmt = getattr(dataset, "format", None) or {}
        decode = fmt.get("format_kwargs", {}).get("transform") if fmt.get("type") == "custom" else None

        def transform(batch: dict) -> dict:
            if decode is not None:
                batch = decode(batch)
            if pixel_key not in batch:
                hint = (
                    " The rows hold videos: pass the dataset, `with_transform(attack.as_transform(model, "
                    "dataset=dataset))`, so the attack runs after its decoding."
                    if "video" in batch and decode is None
                    else ""
                )
                raise ValueError(f"The batch has no {pixel_key!r} column (columns: {sorted(batch)}).{hint}")
            pixels = as_tensor(batch[pixel_key], pixel_key)
            if pixels.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                pixels = pixels.float()  # python-formatted rows come back as float64; integer frames are rejected below
            key = label_key if label_key in batch else ("label" if "label" in batch else None)
            labels = as_tensor(batch[key], key) if key is not None else None
            targets = as_tensor(batch["target_labels"], "target_labels") if "target_labels" in batch else None
            device = _model_device(unwrap_model(model), pixels.device)
            adv = attack.perturb(
                model,
                pixels.to(device),
                None if labels is None else labels.to(device),
                target_labels=None if targets is None else targets.to(device),
            )
            out = dict(batch)
            out[pixel_key] = list(adv.to(output_device).unbind(0))
            return out

        transform.attack = attack  # type: ignore[attr-defined]
        return transform

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
