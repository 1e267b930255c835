"""Argument checks of the attack classes: clear `TypeError` / `ValueError` messages naming the argument."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["as_tensor", "check_choice", "check_int", "check_real"]


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
