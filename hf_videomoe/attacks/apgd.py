"""APGD (Croce & Hein, 2020), AutoAttack's step-size-free PGD: APGD-CE, APGD-DLR and the targeted APGD-T (any
classifier)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack
from .best_iterate import BestIterate, deactivate_fooled
from .model_guard import model_outputs
from .objectives import CLASSIFICATION_LOSSES, ce_loss, dlr_loss, dlr_targeted_loss
from .threat_model import l2_norm, per_sample_random, per_sample_view, project, sample_seeds
from .validation import check_choice, check_int, check_real

__all__ = ["APGD", "APGDCE", "APGDDLR", "APGDT"]


class APGD(Attack):
    """Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020), the gradient attack of AutoAttack, for L∞ and L2.

    Budget-aware step-size schedule, following the reference implementation:

    - initial step ``eta = 2 * eps`` (or ``step_size``), per sample;
    - momentum: ``z = P(x_k + eta * s(grad))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with
      ``a = momentum`` (0.75; 1 on the first step), ``s`` = sign (L∞) or the normalised gradient (L2), ``P`` the
      projection onto the ε-ball and the box;
    - checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22``,
      ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``;
    - at a checkpoint the step of a sample is halved, and the sample restarts from its best point (and best
      gradient), when (1) the objective increased in at most ``rho * (w_j - w_{j-1})`` of the steps since the last
      checkpoint (``rho = 0.75``), or (2) the step was not halved at the previous checkpoint and the best objective did
      not improve since.

    Random start as in the reference: L∞ ``x + eps * t / max|t|``, ``t ~ U(-1, 1)``; L2 ``x + eps * t / ||t||``,
    ``t ~ N(0, I)``. The output is the best iterate per sample (first misclassified iterate, else highest loss), also
    across restarts; restarts only attack samples that are still correctly classified (like AutoAttack).

    Args:
        eps, steps (default 10; AutoAttack uses 100), norm, random_start, seed, restarts, targeted, early_stop, bounds,
        progress: see [`Attack`].
        step_size: initial step ``eta`` (default ``2 * eps``).
        loss: ``"ce"`` or ``"dlr"`` (targeted DLR in targeted mode; DLR needs >= 3 classes, >= 4 targeted).
        rho: the success-rate threshold of condition (1).
        momentum: ``a``.
    """

    name = "apgd"

    def __init__(self, *, loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        self.loss = check_choice("loss", loss, CLASSIFICATION_LOSSES)
        self.rho = check_real("rho", rho, minimum=0.0, maximum=1.0)
        self.momentum = check_real("momentum", momentum, minimum=0.0, maximum=1.0)

    def _default_step_size(self) -> float:
        return 2.0 * self.eps

    def _extra_settings(self) -> dict[str, Any]:
        return {"loss": self.loss, "rho": self.rho, "momentum": self.momentum}

    def _schedule(self) -> tuple[int, int, int]:
        """First checkpoint interval, minimum interval and interval decrement (reference implementation)."""
        n = self.steps
        return max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)

    def checkpoints(self) -> list[int]:
        """The iterations (counted in steps) after which the step-size conditions are checked: ``p_j * steps``."""
        k, k_min, decrement = self._schedule()
        n = self.steps
        points, at = [], 0
        while at + k <= n:
            at += k
            points.append(at)
            k = max(k - decrement, k_min)
        return points

    def _objective(self, logits, labels, target_labels):
        if self.loss == "ce":
            return -ce_loss(logits, target_labels) if self.targeted else ce_loss(logits, labels)
        return dlr_targeted_loss(logits, labels, target_labels) if self.targeted else dlr_loss(logits, labels)

    def _evaluate(self, model, x_adv, labels, target_labels, grad: bool):
        x_adv = x_adv.detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            logits = model_outputs(model, x_adv)[0]
            value = self._objective(logits, labels, target_labels)
            g = torch.autograd.grad(value.sum(), x_adv)[0].detach() if grad else None
        if g is not None:
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        return value.detach(), g, self._fooled(logits, labels, target_labels)

    def _project(self, x_new, x):
        return x + project(x_new - x, x, self.eps, self.norm, self.bounds)

    def _direction(self, grad):
        if self.norm == "linf":
            return grad.sign()
        return grad / per_sample_view(l2_norm(grad).clamp_min(1e-12), grad)

    def _attack(self, model, x, labels, target_labels, clean_outputs=None):
        tracker = BestIterate(x, "misclassification")
        base_seed = self._base_seed()
        with self._progress(self.restarts * self.steps) as bar:
            for restart in range(self.restarts):
                active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                if self.early_stop or restart > 0:
                    active &= ~tracker.fooled
                if not active.any():
                    break
                seeds = sample_seeds(x, base_seed, restart) if self.random_start else None
                self._run(model, x, labels, target_labels, active, tracker, seeds, bar)
        return tracker.x

    def _run(self, model, x, labels, target_labels, active, tracker, seeds, bar):
        if seeds is not None:
            if self.norm == "linf":
                t = 2 * per_sample_random("rand", x, seeds) - 1
                t = t / per_sample_view(t.reshape(t.shape[0], -1).abs().amax(dim=1).clamp_min(1e-12), t)
            else:
                t = per_sample_random("randn", x, seeds)
                t = t / per_sample_view(l2_norm(t).clamp_min(1e-12), t)
            x_adv = self._project(x + self.eps * t, x)
        else:
            x_adv = x.clone()

        def sub(t, index):
            return t if index is None else t[index]

        def evaluate(index, grad=True):
            return self._evaluate(model, sub(x_adv, index), sub(labels, index), sub(target_labels, index), grad)

        batch = x.shape[0]
        index = None if bool(active.all()) else active.nonzero().squeeze(1)
        value, g, fooled = evaluate(index)
        tracker.update(index, sub(x_adv, index), value, fooled)
        grad = torch.zeros_like(x)
        loss = torch.full((batch,), float("-inf"), device=x.device)
        if index is None:
            grad, loss = g, value
        else:
            grad[index], loss[index] = g, value
        if self.early_stop and fooled is not None:
            if index is None:
                active = active & ~fooled
            else:
                active[index[fooled]] = False

        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        x_prev = x_adv.clone()
        step = torch.full((batch,), float(self.step_size), device=x.device)
        successes = torch.zeros(batch, device=x.device)
        reduced_last_check = torch.ones(batch, dtype=torch.bool, device=x.device)
        loss_best_last_check = loss_best.clone()
        k, k_min, decrement = self._schedule()
        since_check = 0

        for i in range(self.steps):
            if not active.any():
                break
            index = None if bool(active.all()) else active.nonzero().squeeze(1)
            a = self.momentum if i > 0 else 1.0
            momentum_term = x_adv - x_prev
            z = self._project(x_adv + per_sample_view(step, x) * self._direction(grad), x)
            z = self._project(x_adv + a * (z - x_adv) + (1 - a) * momentum_term, x)
            keep = per_sample_view(active, x)
            x_prev = torch.where(keep, x_adv, x_prev)
            x_adv = torch.where(keep, z, x_adv)

            value, g, fooled = evaluate(index)
            tracker.update(index, sub(x_adv, index), value, fooled)
            new_loss = loss.clone()
            if index is None:
                grad, new_loss = g, value
            else:
                grad[index], new_loss[index] = g, value
            successes += (active & (new_loss > loss)).float()
            loss = new_loss
            improved = active & (loss > loss_best)
            x_best = torch.where(per_sample_view(improved, x), x_adv, x_best)
            grad_best = torch.where(per_sample_view(improved, x), grad, grad_best)
            loss_best = torch.where(improved, loss, loss_best)

            since_check += 1
            if since_check == k:
                oscillating = successes <= k * self.rho
                no_improvement = (~reduced_last_check) & (loss_best_last_check >= loss_best)
                reduce = oscillating | no_improvement
                reduced_last_check = reduce.clone()
                loss_best_last_check = loss_best.clone()
                reduce &= active
                step = torch.where(reduce, step / 2, step)
                x_adv = torch.where(per_sample_view(reduce, x), x_best, x_adv)
                grad = torch.where(per_sample_view(reduce, x), grad_best, grad)
                successes.zero_()
                since_check = 0
                k = max(k - decrement, k_min)
            if self.early_stop and fooled is not None:
                active = deactivate_fooled(active, index, fooled)
            bar.update(1)


class APGDCE(APGD):
    """APGD on the cross-entropy loss (AutoAttack's first attack). See [`APGD`]."""

    name = "apgd-ce"
    fixed_kwargs = ("loss",)

    def __init__(self, **kwargs):
        if "loss" in kwargs:
            raise TypeError("apgd-ce always uses the CE loss; use build_attack('apgd-dlr') for DLR.")
        super().__init__(loss="ce", **kwargs)


class APGDDLR(APGD):
    """APGD on the Difference-of-Logits-Ratio loss (needs >= 3 classes; targeted DLR needs >= 4). See [`APGD`]."""

    name = "apgd-dlr"
    fixed_kwargs = ("loss",)

    def __init__(self, **kwargs):
        if "loss" in kwargs:
            raise TypeError("apgd-dlr always uses the DLR loss; use build_attack('apgd-ce') for CE.")
        super().__init__(loss="dlr", **kwargs)


class APGDT(APGD):
    """APGD-T, AutoAttack's targeted APGD (Croce & Hein, 2020): in turn for each of the ``num_target_classes`` classes
    the clean logits rank highest after the true one, APGD on the targeted DLR loss toward that class. As in
    AutoAttack, a clip counts as fooled as soon as it is misclassified (whichever class it lands in), and each further
    target class runs only on the clips still standing. Each target class gets ``steps`` steps and ``restarts``
    restarts. Needs >= 4 classes (the targeted DLR loss reads the 3rd and 4th largest logits).

    Args (besides [`APGD`]'s, whose ``loss`` and ``targeted`` are fixed here):
        num_target_classes: how many target classes (AutoAttack: 9; capped at ``num_labels - 1``).
    """

    name = "apgd-t"
    fixed_kwargs = ("loss", "targeted")
    supports_targeted = False  # it picks its own targets

    def __init__(self, *, num_target_classes: int = 9, **kwargs):
        for fixed in self.fixed_kwargs:
            if fixed in kwargs:
                raise TypeError(f"apgd-t always uses the targeted DLR loss toward its own targets; `{fixed}` is fixed.")
        super().__init__(loss="dlr", **kwargs)
        self.num_target_classes = check_int("num_target_classes", num_target_classes, 1)

    def _extra_settings(self) -> dict[str, Any]:
        return {**super()._extra_settings(), "num_target_classes": self.num_target_classes}

    def _objective(self, logits, labels, target_labels):
        return dlr_targeted_loss(logits, labels, target_labels)

    def _attack(self, model, x, labels, target_labels, clean_outputs=None):
        with torch.no_grad():
            logits = model_outputs(model, x)[0].float() if clean_outputs is None else clean_outputs[0].float()
        num_classes = logits.shape[-1]
        if num_classes < 4:
            raise ValueError(f"apgd-t needs a classifier with at least 4 classes (targeted DLR), got {num_classes}.")
        # The other classes by clean logit, most likely first.
        ranked = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=-1, descending=True)
        tracker = BestIterate(x, "misclassification")
        base_seed = self._base_seed()
        num_targets = min(self.num_target_classes, num_classes - 1)
        with self._progress(num_targets * self.restarts * self.steps) as bar:
            for rank in range(num_targets):
                for restart in range(self.restarts):
                    active = ~tracker.fooled
                    if not active.any():
                        break
                    stream = rank * self.restarts + restart
                    seeds = sample_seeds(x, base_seed, stream) if self.random_start else None
                    self._run(model, x, labels, ranked[:, rank], active, tracker, seeds, bar)
        return tracker.x
