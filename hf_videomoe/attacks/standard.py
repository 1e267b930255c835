"""Standard attacks on the classifier output: FGSM, PGD, APGD-CE / APGD-DLR (AutoAttack) and Square Attack.

They apply to any classifier (dense or MoE) that maps ``pixel_values`` to logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .engine import (
    Attack,
    BestIterate,
    GradientAttack,
    _check_choice,
    _check_int,
    _check_real,
    _l2_norm,
    _per_sample_random,
    _per_sample_view,
    project,
    sample_seeds,
)
from .objectives import (
    CLASSIFICATION_LOSSES,
    Objective,
    ce_loss,
    dlr_loss,
    dlr_targeted_loss,
    margin_loss,
    model_outputs,
)

__all__ = ["APGD", "APGDCE", "APGDDLR", "FGSM", "PGD", "Square"]


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

    def __init__(self, *, loss: str = "ce", random_start: bool = False, steps: int | None = None,
                 step_size: float | None = None, **kwargs):
        self.loss = _check_choice("loss", loss, CLASSIFICATION_LOSSES)
        if steps is not None:
            _check_int("steps", steps, 0)
        _check_real("step_size", step_size, minimum=0.0, allow_none=True, strict_min=True)
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
        self.loss = _check_choice("loss", loss, CLASSIFICATION_LOSSES)
        super().__init__(**kwargs)

    def build_objective(self) -> Objective:
        return Objective(loss=self.loss, targeted=self.targeted)

    def _extra_settings(self) -> dict[str, Any]:
        return {"loss": self.loss, **super()._extra_settings()}


# ----------------------------------------------------------------------------------------------------------------------
# APGD
# ----------------------------------------------------------------------------------------------------------------------


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
        loss: str = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        progress: bool = False,
    ):
        super().__init__(
            eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start, seed=seed,
            restarts=restarts, targeted=targeted, early_stop=early_stop, bounds=bounds, progress=progress,
        )
        self.loss = _check_choice("loss", loss, CLASSIFICATION_LOSSES)
        self.rho = _check_real("rho", rho, minimum=0.0, maximum=1.0)
        self.momentum = _check_real("momentum", momentum, minimum=0.0, maximum=1.0)

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
        return grad / _per_sample_view(_l2_norm(grad).clamp_min(1e-12), grad)

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
                t = 2 * _per_sample_random("rand", x, seeds) - 1
                t = t / _per_sample_view(t.reshape(t.shape[0], -1).abs().amax(dim=1).clamp_min(1e-12), t)
            else:
                t = _per_sample_random("randn", x, seeds)
                t = t / _per_sample_view(_l2_norm(t).clamp_min(1e-12), t)
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
            z = self._project(x_adv + _per_sample_view(step, x) * self._direction(grad), x)
            z = self._project(x_adv + a * (z - x_adv) + (1 - a) * momentum_term, x)
            keep = _per_sample_view(active, x)
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
            x_best = torch.where(_per_sample_view(improved, x), x_adv, x_best)
            grad_best = torch.where(_per_sample_view(improved, x), grad, grad_best)
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
                x_adv = torch.where(_per_sample_view(reduce, x), x_best, x_adv)
                grad = torch.where(_per_sample_view(reduce, x), grad_best, grad)
                successes.zero_()
                since_check = 0
                k = max(k - decrement, k_min)
            if self.early_stop and fooled is not None:
                if index is None:
                    active = active & ~fooled
                else:
                    active[index[fooled]] = False
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


# ----------------------------------------------------------------------------------------------------------------------
# Square Attack
# ----------------------------------------------------------------------------------------------------------------------


SQUARE_WINDOWS = ("tube", "frame")
_SQUARE_CANDIDATES = 4


def square_p_schedule(iteration: int, total: int, p_init: float) -> float:
    """Square Attack's schedule of the fraction ``p`` of pixels changed per query (Andriushchenko et al., 2020):
    halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10 000-query budget, rescaled to
    ``total`` queries."""
    it = int(iteration / max(total, 1) * 10000)
    for halvings, bound in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if it <= bound:
            return p_init / 2**halvings
    return p_init / 512


class Square(Attack):
    """Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box L∞ attack using only logits (no
    gradients).

    Initialisation with vertical stripes of ``±eps`` (one sign per channel and column, shared by all frames and rows);
    then, for ``steps`` queries, each not-yet-fooled sample proposes to set a random ``s × s`` window to a random
    vertex ``±eps`` per channel, and keeps the proposal if it lowers the margin loss ``z_y - max_{i≠y} z_i`` (targeted:
    the cross-entropy to the target). ``s = round(sqrt(p * height * width))`` with ``p`` following
    [`square_p_schedule`] from ``p_init``.

    For video, ``window="tube"`` (default) applies the square at the same position in *all* frames — the fraction
    ``p`` then means the same as for an image, and the perturbation budget is spent on structure every frame sees;
    ``window="frame"`` picks a random frame and changes the window in that frame only (a finer but ``frames`` times
    slower search). Window positions, frames and colours are drawn per sample (the reference shares the position
    across the batch) from per-sample generators, so a batch gives the same result as its samples one by one.

    Args:
        eps, seed, restarts, targeted, bounds, progress: see [`Attack`]. ``norm`` must be ``"linf"``.
        steps: number of queries per restart (default 1000; the paper uses 10 000).
        step_size, random_start, early_stop: accepted for a uniform interface and ignored (no step size; the start
            is always random stripes; fooled samples are never queried again).
        p_init: initial fraction of changed pixels (0.8 for L∞ in the paper).
        window: ``"tube"`` or ``"frame"``.
    """

    name = "square"
    supported_norms = ("linf",)
    default_steps = 1000

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
        early_stop: bool = True,
        p_init: float = 0.8,
        window: str = "tube",
        bounds: tuple[float, float] | None = (0.0, 1.0),
        progress: bool = False,
    ):
        # Interface uniformity: Square has no step size (every change is a vertex of the ε-ball), always starts from
        # random stripes and, by design, stops querying fooled samples.
        _check_real("step_size", step_size, minimum=0.0, allow_none=True, strict_min=True)
        super().__init__(eps=eps, steps=steps, norm=norm, random_start=True, seed=seed, restarts=restarts,
                         targeted=targeted, early_stop=True, bounds=bounds, progress=progress)
        self.p_init = _check_real("p_init", p_init, minimum=0.0, maximum=1.0, strict_min=True)
        self.window = _check_choice("window", window, SQUARE_WINDOWS)

    def _default_step_size(self) -> None:
        return None

    def _extra_settings(self) -> dict[str, Any]:
        return {"p_init": self.p_init, "window": self.window, "queries": self.steps * self.restarts}

    def _margin_and_loss(self, model, x_adv, labels, target_labels):
        logits = model_outputs(model, x_adv)[0]
        if self.targeted:
            margin = margin_loss(logits, target_labels, targeted=True)
            loss = ce_loss(logits, target_labels)
        else:
            margin = margin_loss(logits, labels)
            loss = margin.clone()
        return margin, loss, self._fooled(logits, labels, target_labels)

    def _attack(self, model, x, labels, target_labels, clean_outputs=None):
        tracker = BestIterate(x, "misclassification")
        base_seed = self._base_seed()
        with torch.no_grad(), self._progress(self.restarts * self.steps) as bar:
            for restart in range(self.restarts):
                active = ~tracker.fooled
                if not active.any():
                    break
                self._run(model, x, labels, target_labels, active, tracker, sample_seeds(x, base_seed, restart), bar)
        return tracker.x

    def _run(self, model, x, labels, target_labels, active, tracker, seeds, bar):
        index = active.nonzero().squeeze(1)
        xs = x[index]
        ys = None if labels is None else labels[index]
        ts = None if target_labels is None else target_labels[index]
        b, frames, channels, height, width = xs.shape
        eps = self.eps
        # All randomness of this run, drawn up front from one generator per sample: stripes, then per query the window
        # row, column and frame and `_SQUARE_CANDIDATES` colour vectors (the reference resamples the colours until the
        # window changes; taking the first candidate that changes it is the same rule with a bounded number of draws).
        per_query = 3 + _SQUARE_CANDIDATES * channels
        draws = _per_sample_random("rand", xs, [seeds[i] for i in index.tolist()],
                                   shape=(channels * width + self.steps * per_query,))
        stripes = torch.where(draws[:, : channels * width] < 0.5, -eps, eps).reshape(b, 1, channels, 1, width)
        table = draws[:, channels * width:].reshape(b, self.steps, per_query)

        x_best = self._clip(xs + stripes, xs)
        margin, loss, fooled = self._margin_and_loss(model, x_best, ys, ts)
        tracker.update(index, x_best, -loss, fooled)
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        frame_ids = torch.arange(frames, device=x.device)
        for i in range(self.steps):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            p = square_p_schedule(i, self.steps, self.p_init)
            s = min(max(int(round(math.sqrt(p * height * width))), 1), max(min(height, width) - 1, 1))
            u = table[todo, i]
            vh = (u[:, 0] * (height - s + 1)).long().clamp(max=height - s)
            vw = (u[:, 1] * (width - s + 1)).long().clamp(max=width - s)
            row_mask = (rows[None] >= vh[:, None]) & (rows[None] < (vh + s)[:, None])
            col_mask = (cols[None] >= vw[:, None]) & (cols[None] < (vw + s)[:, None])
            if self.window == "frame":
                vf = (u[:, 2] * frames).long().clamp(max=frames - 1)
                frame_mask = frame_ids[None] == vf[:, None]
            else:
                frame_mask = torch.ones(todo.numel(), frames, dtype=torch.bool, device=x.device)
            mask = (frame_mask[:, :, None, None, None] & row_mask[:, None, None, :, None]
                    & col_mask[:, None, None, None, :])

            x_cur, best_cur = xs[todo], x_best[todo]
            delta_cur = best_cur - x_cur
            proposal = best_cur
            chosen = torch.zeros(todo.numel(), dtype=torch.bool, device=x.device)
            for c in range(_SQUARE_CANDIDATES):
                colours = u[:, 3 + c * channels: 3 + (c + 1) * channels]
                colours = torch.where(colours < 0.5, -eps, eps).reshape(-1, 1, channels, 1, 1)
                candidate = self._clip(x_cur + torch.where(mask, colours, delta_cur), x_cur)
                changes = ((candidate - best_cur).abs() > 1e-7).reshape(todo.numel(), -1).any(dim=1)
                take = changes & ~chosen
                proposal = torch.where(_per_sample_view(take, proposal), candidate, proposal)
                chosen |= take
            new_margin, new_loss, new_fooled = self._margin_and_loss(
                model, proposal, None if ys is None else ys[todo], None if ts is None else ts[todo]
            )
            improved = new_loss < loss[todo]
            accepted = todo[improved]
            x_best[accepted] = proposal[improved]
            loss[accepted] = new_loss[improved]
            margin[accepted] = new_margin[improved]
            fooled[accepted] = new_fooled[improved]
            tracker.update(index[accepted], proposal[improved], -new_loss[improved], new_fooled[improved])
            bar.update(1)

    def _clip(self, x_new, x):
        return x + project(x_new - x, x, self.eps, "linf", self.bounds)
