"""FGSM and PGD: the projected-gradient attacks on the classification loss (any classifier, dense or MoE)."""

from __future__ import annotations

from typing import Any

from .gradient import GradientAttack
from .objectives import CLASSIFICATION_LOSSES, Objective
from .validation import check_choice, check_int, check_real

__all__ = ["FGSM", "PGD"]


class FGSM(GradientAttack):
    """Fast Gradient Sign Method (Goodfellow et al., 2015): one step of size ``eps`` along the gradient sign (L∞) or
    the normalised gradient (L2), from the clean input (or a random start: "R+FGSM").

    Unlike the multi-step attacks it returns the stepped point by default (``selection="last"``), as FGSM is usually
    understood; ``selection="misclassification"`` returns the start instead when that already fools the model.

    Takes every [`Attack`] / [`GradientAttack`] argument; ``random_start`` defaults to ``False``. FGSM is single-step
    by definition: ``steps`` and ``step_size`` are accepted (and validated) for a uniform interface, but it always
    takes one step of size ``eps``.

    Args:
        loss: ``"ce"`` or ``"dlr"``.
    """

    name = "fgsm"
    default_selection = "last"

    def __init__(
        self,
        *,
        loss: str = "ce",
        random_start: bool = False,
        steps: int | None = None,
        step_size: float | None = None,
        **kwargs,
    ):
        self.loss = check_choice("loss", loss, CLASSIFICATION_LOSSES)
        if steps is not None:
            check_int("steps", steps, 0)
        check_real("step_size", step_size, minimum=0.0, allow_none=True, strict_min=True)
        super().__init__(steps=1, random_start=random_start, **kwargs)

    def _default_step_size(self) -> float:
        return self.eps

    def build_objective(self) -> Objective:
        return Objective(loss=self.loss, targeted=self.targeted)

    def _extra_settings(self) -> dict[str, Any]:
        return {"loss": self.loss, **super()._extra_settings()}


class PGD(GradientAttack):
    """Projected Gradient Descent (Madry et al., 2018) on the classifier's cross-entropy (or DLR): sign steps (L∞) or
    normalised-gradient steps (L2) of size ``step_size`` (default ``2.5 * eps / steps``) from a uniform random start,
    projected on the ε-ball and the box after each step; best iterate per sample (misclassification first).

    Takes every [`Attack`] / [`GradientAttack`] argument, plus ``loss`` (``"ce"`` or ``"dlr"``).
    """

    name = "pgd"

    def __init__(self, *, loss: str = "ce", **kwargs):
        self.loss = check_choice("loss", loss, CLASSIFICATION_LOSSES)
        super().__init__(**kwargs)

    def build_objective(self) -> Objective:
        return Objective(loss=self.loss, targeted=self.targeted)

    def _extra_settings(self) -> dict[str, Any]:
        return {"loss": self.loss, **super()._extra_settings()}
