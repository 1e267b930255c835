"""Square Attack (Andriushchenko et al., 2020), score-based and gradient-free, with video windows
(a square tube through all frames, or one frame)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Attack, BestIterate
from .model_guard import model_outputs
from .objectives import ce_loss, margin_loss
from .threat_model import per_sample_random, per_sample_view, project, sample_seeds
from .validation import check_choice, check_real

__all__ = ["SQUARE_WINDOWS", "Square", "square_p_schedule"]


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

    def __init__(self, *, p_init: float = 0.8, window: str = "tube", **kwargs):
        # Interface uniformity: Square has no step size (every change is a vertex of the ε-ball), always starts from
        # random stripes and, by design, stops querying fooled samples; those arguments are checked, then ignored.
        check_real("step_size", kwargs.pop("step_size", None), minimum=0.0, allow_none=True, strict_min=True)
        kwargs.pop("random_start", None)
        kwargs.pop("early_stop", None)
        super().__init__(random_start=True, early_stop=True, **kwargs)
        self.p_init = check_real("p_init", p_init, minimum=0.0, maximum=1.0, strict_min=True)
        self.window = check_choice("window", window, SQUARE_WINDOWS)

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
        draws = per_sample_random(
            "rand", xs, [seeds[i] for i in index.tolist()], shape=(channels * width + self.steps * per_query,)
        )
        stripes = torch.where(draws[:, : channels * width] < 0.5, -eps, eps).reshape(b, 1, channels, 1, width)
        table = draws[:, channels * width :].reshape(b, self.steps, per_query)

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
            mask = (
                frame_mask[:, :, None, None, None] & row_mask[:, None, None, :, None] & col_mask[:, None, None, None, :]
            )

            x_cur, best_cur = xs[todo], x_best[todo]
            delta_cur = best_cur - x_cur
            proposal = best_cur
            chosen = torch.zeros(todo.numel(), dtype=torch.bool, device=x.device)
            for c in range(_SQUARE_CANDIDATES):
                colours = u[:, 3 + c * channels : 3 + (c + 1) * channels]
                colours = torch.where(colours < 0.5, -eps, eps).reshape(-1, 1, channels, 1, 1)
                candidate = self._clip(x_cur + torch.where(mask, colours, delta_cur), x_cur)
                changes = ((candidate - best_cur).abs() > 1e-7).reshape(todo.numel(), -1).any(dim=1)
                take = changes & ~chosen
                proposal = torch.where(per_sample_view(take, proposal), candidate, proposal)
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
