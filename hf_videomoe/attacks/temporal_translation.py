"""TT: the temporal-translation attack of Wei et al. (AAAI 2022), one of the paper's baselines."""

from __future__ import annotations

import math
from typing import Any

import torch

from .gradient import GradientAttack
from .objectives import CLASSIFICATION_LOSSES, Objective, ObjectiveOutput
from .validation import check_choice, check_int

__all__ = ["TT"]

TT_KERNELS = ("gaussian", "linear", "uniform")


def translation_weights(max_shift: int, kernel: str) -> list[float]:
    """Weights of the shifts ``-max_shift .. max_shift`` (summing to 1), as in the authors' code: a Gaussian with
    σ = max_shift / 3, a triangle (``linear``) or equal weights."""
    shifts = range(-max_shift, max_shift + 1)
    if max_shift == 0:
        return [1.0]
    if kernel == "gaussian":
        sigma = max_shift / 3
        raw = [math.exp(-(s * s) / (2 * sigma * sigma)) for s in shifts]
    elif kernel == "linear":
        raw = [1 - abs(s) / (max_shift + 1) for s in shifts]
    else:
        raw = [1.0 for _ in shifts]
    total = sum(raw)
    return [w / total for w in raw]


class TT(GradientAttack):
    """Temporal Translation (Wei et al., "Boosting the Transferability of Video Adversarial Examples via Temporal
    Translation", AAAI 2022): every step follows the weighted average of the loss gradients of temporally shifted
    copies of the clip — frames rolled cyclically by ``s`` for ``s`` in ``[-max_shift, max_shift]`` and each gradient
    rolled back — so the perturbation does not overfit one temporal alignment of the attacked model. Steps of size
    ``eps / steps`` from the clean clip (I-FGSM, as in the authors' code); best iterate per sample as in PGD.

    A step costs ``2 * max_shift + 1`` forward and backward passes. Built for transfer; as a white-box attack it is
    usually weaker than PGD, which is why the paper reports it. The momentum variant (TT-MI) is not included.

    Args (besides [`Attack`] / [`GradientAttack`]'s; ``random_start`` defaults to ``False``):
        max_shift: largest temporal shift in frames (``None``: a quarter of the clip's frames, at least 1; the
            authors use 7 of 32).
        kernel: weights of the shifts, ``"gaussian"`` (default, σ = max_shift / 3), ``"linear"`` or ``"uniform"``.
        loss: ``"ce"`` or ``"dlr"``.
    """

    name = "tt"

    def __init__(
        self,
        *,
        max_shift: int | None = None,
        kernel: str = "gaussian",
        loss: str = "ce",
        random_start: bool = False,
        **kwargs,
    ):
        self.max_shift = None if max_shift is None else check_int("max_shift", max_shift, 0)
        self.kernel = check_choice("kernel", kernel, TT_KERNELS)
        self.loss = check_choice("loss", loss, CLASSIFICATION_LOSSES)
        super().__init__(random_start=random_start, **kwargs)

    def _default_step_size(self) -> float:
        return self.eps / max(self.steps, 1)

    def build_objective(self) -> Objective:
        return Objective(loss=self.loss, targeted=self.targeted)

    def _extra_settings(self) -> dict[str, Any]:
        return {"max_shift": self.max_shift, "kernel": self.kernel, "loss": self.loss, **super()._extra_settings()}

    def shifts_for(self, frames: int) -> list[tuple[int, float]]:
        """``(shift, weight)`` pairs for a clip of ``frames`` frames."""
        max_shift = max(1, frames // 4) if self.max_shift is None else self.max_shift
        max_shift = min(max_shift, frames - 1)  # a full cycle is the clip itself
        return list(zip(range(-max_shift, max_shift + 1), translation_weights(max_shift, self.kernel)))

    def _objective_and_gradient(self, model, x_adv, ctx, objective):
        grad = torch.zeros_like(x_adv)
        out = None
        for shift, weight in self.shifts_for(x_adv.shape[1]):
            # The gradient w.r.t. x_adv of the loss on the rolled clip is already rolled back to x_adv's frames.
            shifted = objective(model, torch.roll(x_adv, shifts=shift, dims=1), ctx)
            (shift_grad,) = torch.autograd.grad(shifted.value.sum(), x_adv)
            grad += weight * shift_grad
            if shift == 0:
                logits = None if shifted.logits is None else shifted.logits.detach()
                out = ObjectiveOutput(value=shifted.value.detach(), logits=logits)
        return out, grad
