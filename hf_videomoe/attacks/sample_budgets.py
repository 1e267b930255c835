"""Per-clip budgets: one attack call with a different ε for each clip (``Attack.perturb(..., eps=...)``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from .validation import check_real

__all__ = ["perturb_per_sample_eps"]


def _budgets(eps, batch: int) -> list[float]:
    if hasattr(eps, "__array__") and not isinstance(eps, torch.Tensor):  # numpy arrays and the like
        eps = torch.as_tensor(eps, dtype=torch.float64)
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0:
            values = [float(eps)] * batch
        elif eps.dim() == 1 and eps.shape[0] == batch:
            values = [float(v) for v in eps.detach().cpu().tolist()]
        else:
            raise ValueError(
                f"A per-clip eps must have shape ({batch},) for a batch of {batch} clips, got {tuple(eps.shape)}."
            )
    elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
        values = [float(eps)] * batch
    elif isinstance(eps, Sequence) and not isinstance(eps, str):
        if len(eps) != batch:
            raise ValueError(f"A per-clip eps needs one budget per clip: {batch} clips, {len(eps)} budgets.")
        values = [check_real("eps", v, minimum=0.0) for v in eps]
    else:
        raise TypeError(f"eps must be a number, a (batch,) tensor or a sequence of numbers, got {type(eps).__name__}.")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"Every per-clip eps must be a finite number >= 0, got {value!r}.")
    return values


def _rows_of(clean_outputs, rows: torch.Tensor):
    """``(logits, router_logits)`` restricted to ``rows``."""
    if clean_outputs is None:
        return None
    logits, router_logits = clean_outputs
    pick = rows.to(logits.device)
    return logits[pick], (None if router_logits is None else tuple(r[rows.to(r.device)] for r in router_logits))


def perturb_per_sample_eps(
    attack, model, pixel_values: torch.Tensor, labels, eps, *, target_labels=None, clean_outputs=None
):
    """``attack.perturb`` with budget ``eps[b]`` for clip ``b``: clips are grouped by budget and each group is attacked
    by a copy of ``attack`` with that ``eps`` (which validates it). The library's attacks draw every random number
    per clip from the clip itself, so a clip's example does not depend on the group it lands in: a vector filled with
    one value gives exactly the scalar attack's result."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() < 1:
        raise TypeError(
            f"{attack.name} expects pixel_values as a (batch, ...) tensor, got {type(pixel_values).__name__}."
        )
    batch = pixel_values.shape[0]
    budgets = _budgets(eps, batch)
    labels = None if labels is None else torch.as_tensor(labels)
    target_labels = None if target_labels is None else torch.as_tensor(target_labels)
    out = pixel_values.detach().clone()
    for value in sorted(set(budgets)):
        rows = torch.tensor([i for i, v in enumerate(budgets) if v == value], dtype=torch.long)
        variant = copy.copy(attack)
        variant.eps = check_real("eps", value, minimum=0.0)
        variant.check_budget()
        pick = rows.to(pixel_values.device)
        out[pick] = variant.perturb(
            model,
            pixel_values[pick],
            None if labels is None else labels[rows.to(labels.device)],
            target_labels=None if target_labels is None else target_labels[rows.to(target_labels.device)],
            clean_outputs=_rows_of(clean_outputs, rows),
        )
    return out
