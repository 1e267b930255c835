"""[`BestIterate`]: which iterate of an attack each sample keeps, across steps and restarts, and early stopping."""

from __future__ import annotations

import torch

from .threat_model import per_sample_view

SELECTIONS = ("misclassification", "objective", "last")

__all__ = ["BestIterate", "SELECTIONS", "deactivate_fooled"]


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
            self.x = torch.where(per_sample_view(better, self.x), x_adv.detach(), self.x)
            self.value = torch.where(better, value, self.value)
            self.fooled = torch.where(better, fooled, self.fooled)
        else:
            chosen = index[better]
            self.x[chosen] = x_adv.detach()[better]
            self.value[chosen] = value[better]
            self.fooled[chosen] = fooled[better]


def deactivate_fooled(active: torch.Tensor, index: torch.Tensor | None, fooled: torch.Tensor) -> torch.Tensor:
    """Early stopping: ``active`` with the samples just fooled switched off (``index``: the rows ``fooled`` describes,
    ``None`` for all)."""
    if index is None:
        return active & ~fooled
    active[index[fooled]] = False
    return active
