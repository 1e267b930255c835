"""[`GradientAttack`]: the projected (sign-)gradient loop every first-order attack except APGD runs on."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import Attack
from .best_iterate import SELECTIONS, BestIterate, deactivate_fooled
from .objectives import Objective, ObjectiveContext
from .threat_model import (
    TEMPORAL_STEPS,
    l2_norm,
    per_sample_view,
    project,
    random_start,
    sample_seeds,
    temporal_step_sizes,
)
from .validation import check_choice, check_real

__all__ = ["GradientAttack"]


class GradientAttack(Attack):
    """Projected gradient ascent on an [`Objective`], with temporal adaptive steps, best-iterate tracking, early stop
    and restarts. FGSM, PGD and all the paper's attacks are this loop with different objectives and defaults.

    Each step costs one forward and one backward pass (w.r.t. the input only); the clean quantities the objective
    needs are computed once per call, and one extra forward without gradient evaluates the last iterate.

    L∞ steps move along ``sign(grad)``, L2 steps along ``grad / ||grad||_2`` (per sample); frame ``f`` of sample ``b``
    moves by ``alpha[b, f]`` from [`temporal_step_sizes`], where ``V[b, f] <- beta * V[b, f] + ||grad_{x_f}||_2``.

    Args (besides [`Attack`]'s):
        temporal_step: ``"normalized"``, ``"published"``, ``"uniform"`` or ``"inverse"`` (see
            [`temporal_step_sizes`]).
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
        self.temporal_step = check_choice(
            "temporal_step", self.default_temporal_step if temporal_step is None else temporal_step, TEMPORAL_STEPS
        )
        self.temporal_momentum = check_real("temporal_momentum", temporal_momentum, minimum=0.0, maximum=1.0)
        self.selection = check_choice(
            "selection", self.default_selection if selection is None else selection, SELECTIONS
        )
        objective = self.build_objective()  # validates weights early
        if self.early_stop and not (objective.requires_labels or self.targeted):
            raise ValueError(
                f"early_stop stops samples once they are misclassified, but {self.name!r} has no "
                "classification loss (it maximises a routing objective); leave early_stop off."
            )
        if self.selection == "misclassification" and not objective.requires_labels and not self.targeted:
            raise ValueError(
                f"{self.name!r} has no classification loss, so it cannot select iterates by "
                "misclassification; use selection='objective'."
            )

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

    def _objective_and_gradient(self, model, x_adv: torch.Tensor, ctx: ObjectiveContext, objective: Objective):
        """The objective at ``x_adv`` (its value and logits decide the best iterate) and the input gradient that the
        step follows: here the objective's own gradient; attacks that average gradients over transformed copies of
        the input (TT) override this."""
        out = objective(model, x_adv, ctx)
        (grad,) = torch.autograd.grad(out.value.sum(), x_adv)
        return out, grad

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
                out, grad = self._objective_and_gradient(model, x_adv, sub_ctx, objective)
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
                direction = grad / per_sample_view(l2_norm(grad).clamp_min(1e-12), grad)
            new_delta = project(
                delta_sub + per_sample_view(alpha, grad) * direction, x_sub, self.eps, self.norm, self.bounds
            )
            if index is None:
                delta, accumulated = new_delta, acc_sub
            else:
                delta[index] = new_delta
                accumulated[index] = acc_sub
            if self.early_stop and fooled is not None:
                active = deactivate_fooled(active, index, fooled)
            bar.update(1)
