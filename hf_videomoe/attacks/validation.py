"""Argument checks of the attack classes: clear `TypeError` / `ValueError` messages naming the argument.

The scalar checks serve the constructors; the input checks serve [`Attack.perturb`], which runs them on every call
before the model is touched.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..moe import is_moe_model
from .names import DENSE_ATTACKS
from .threat_model import PIXEL_RANGE_TOLERANCE

__all__ = [
    "as_tensor",
    "check_choice",
    "check_clean_outputs",
    "check_int",
    "check_l2_budget",
    "check_labels",
    "check_moe_model",
    "check_pixel_values",
    "check_real",
]


def check_real(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
    strict_min: bool = False,
) -> float | None:
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


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {tuple(choices)}.")
    return value.lower()


def as_tensor(value, name: str) -> torch.Tensor:
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


# -- what `Attack.perturb` receives ---------------------------------------------------------------------------------


def check_moe_model(model: nn.Module, attack_name: str) -> None:
    """Refuse a model without MoE layers for an attack on routers / experts, naming the attacks that do apply."""
    if not is_moe_model(model):
        raise ValueError(
            f"The {attack_name!r} attack targets routers / experts and needs a Mixture-of-Experts model, but "
            f"{type(model).__name__} has no MoE layer. Attacks that apply to dense models: "
            f"{', '.join(DENSE_ATTACKS)}. (Upcycle a dense model with `from_dense` to attack its routers.)"
        )


def check_pixel_values(pixel_values, bounds: tuple[float, float] | None) -> torch.Tensor:
    """Check that ``pixel_values`` is a finite float ``(batch, frames, channels, height, width)`` tensor inside the
    box ``bounds`` (up to `PIXEL_RANGE_TOLERANCE`; ``None``: no range check) and return it unchanged."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"`pixel_values` must be a torch.Tensor (batch, frames, channels, height, width), got "
            f"{type(pixel_values).__name__}."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"`pixel_values` must be a float tensor in [0, 1], got dtype {pixel_values.dtype} "
            "(divide uint8 frames by 255)."
        )
    if pixel_values.ndim != 5:
        raise ValueError(
            f"`pixel_values` must have rank 5, (batch, frames, channels, height, width); got shape "
            f"{tuple(pixel_values.shape)}."
        )
    if pixel_values.numel():
        finite = torch.isfinite(pixel_values).all()
        if not finite:
            raise ValueError("`pixel_values` contains NaN or infinite values.")
        if bounds is not None:
            low, high = pixel_values.detach().aminmax()
            lo, hi = bounds
            if low < lo - PIXEL_RANGE_TOLERANCE or high > hi + PIXEL_RANGE_TOLERANCE:
                raise ValueError(
                    f"`pixel_values` must lie in [{lo:g}, {hi:g}] (raw pixels; the MoE models normalise inside), "
                    f"got values in [{float(low):.4g}, {float(high):.4g}]. For a model that takes normalised "
                    "inputs wrap it in `hf_videomoe.attacks.NormalizedModel`, or pass `bounds=None`."
                )
    return pixel_values


def check_labels(
    labels, batch_size: int, name: str, *, attack_name: str, required: bool, num_labels=None
) -> torch.Tensor | None:
    """``labels`` (or ``target_labels``, per ``name``) as a ``(batch_size,)`` int64 tensor of class indices in
    ``[0, num_labels)`` (only checked non-negative when the model's ``num_labels`` is unknown); ``None`` stays ``None``
    unless the attack ``required`` them."""
    if labels is None:
        if required:
            raise ValueError(f"The {attack_name!r} attack needs `{name}` (a (batch,) tensor of class indices).")
        return None
    labels = as_tensor(labels, name)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integer class indices, got dtype {labels.dtype}.")
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` must have shape ({batch_size},) to match `pixel_values`, got {tuple(labels.shape)}."
        )
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (isinstance(num_labels, int) and num_labels > 0 and high >= num_labels):
            bound = f"[0, {num_labels})" if isinstance(num_labels, int) else "non-negative"
            raise ValueError(f"`{name}` must be class indices in {bound}, got values in [{low}, {high}].")
    return labels.long()


def check_l2_budget(eps: float, bounds: tuple[float, float], clip_shape: tuple[int, ...]) -> None:
    """Refuse an L2 ``eps`` wider than the diameter of the pixel box for clips of ``clip_shape``: every clip would
    be reachable from every other, so the budget was surely written in the wrong unit."""
    diameter = (float(bounds[1]) - float(bounds[0])) * math.sqrt(math.prod(clip_shape))
    if eps > diameter:
        raise ValueError(
            f"`eps`={eps!r} is an L2 budget larger than the diameter {diameter:.4g} of the pixel box for "
            f"clips of shape {tuple(clip_shape)}: every clip would be reachable from every other."
        )


def check_clean_outputs(clean_outputs, batch_size: int):
    """The caller's ``(logits, router_logits)`` of the clean batch, detached, after checking the logits' shape."""
    if clean_outputs is None:
        return None
    if not isinstance(clean_outputs, (tuple, list)) or len(clean_outputs) != 2:
        raise TypeError("`clean_outputs` must be a `(logits, router_logits)` pair.")
    logits, router_logits = clean_outputs
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch_size:
        raise ValueError(
            f"`clean_outputs` logits must be a (batch={batch_size}, num_labels) tensor, got "
            f"{getattr(logits, 'shape', type(logits).__name__)}."
        )
    return logits.detach(), None if router_logits is None else tuple(r.detach() for r in router_logits)
