"""Helpers of the adversarial trainers: parameter groups, per-sample losses, routing statistics, seeds, TRADES."""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import attack_mode, project
from ..moe import named_expert_parameters, named_router_parameters

PARAMETER_GROUPS = ("all", "router", "expert", "non_router")


@dataclass(frozen=True)
class TrainingPhase:
    """One sub-step of a training step: which loss it minimises and which parameters it updates.

    Attributes:
        name: ``"router"``, ``"expert"`` or ``"model"`` (the loss family; used in logged metric names).
        label: human-readable name used in log and error messages (e.g. ``"J-TLAT step 2 (expert)"``).
        parameters: the parameter group that receives this phase's gradient: ``"all"``, ``"router"``, ``"expert"``
            or ``"non_router"``.
        attack: name of the attack generating this phase's adversarial examples (``None``: clean inputs;
            ``"trades"``: TRADES' own KL maximisation).
    """

    name: str
    label: str
    parameters: str = "all"
    attack: str | None = None


class ParameterGroups:
    """Router / expert split of a model's parameters, computed once, and a context manager that lets gradients reach
    only one group (by toggling ``requires_grad``; parameters the user froze stay frozen)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.router_ids = {id(p) for _, p in named_router_parameters(model)}
        self.expert_ids = {id(p) for _, p in named_expert_parameters(model)}

    def selects(self, group: str, param: nn.Parameter) -> bool:
        if group == "all":
            return True
        if group == "router":
            return id(param) in self.router_ids
        if group == "expert":
            return id(param) in self.expert_ids
        if group == "non_router":
            return id(param) not in self.router_ids
        raise ValueError(f"Unknown parameter group {group!r}; expected one of {PARAMETER_GROUPS}.")

    def parameters(self, group: str) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if self.selects(group, p)]

    @contextlib.contextmanager
    def only(self, group: str):
        """Inside the block only ``group`` requires grad; flags are restored on exit (also after an exception)."""
        if group == "all":
            yield
            return
        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag and self.selects(group, p))
            yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)


def step_seed(*parts: int | str) -> int:
    """A 63-bit attack seed derived from integers and strings (stable across runs, processes and Python versions)."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample cross-entropy in float32, ``(batch,)``."""
    return F.cross_entropy(logits.float(), labels.long(), reduction="none", label_smoothing=label_smoothing)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(softmax(p) ‖ softmax(q))``, ``(batch,)`` in float32 (TRADES: p clean, q adversarial)."""
    p_log = p_logits.float().log_softmax(dim=-1)
    q_log = q_logits.float().log_softmax(dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1)


def expert_usage_entropy(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """Normalised entropy of the expert load (fraction of routing slots per expert), averaged over MoE layers.

    1 means perfectly balanced routing, 0 means every unit goes to the same expert. A scalar tensor.
    """
    values = []
    for logits in router_logits:
        experts = logits.shape[-1]
        if experts < 2:
            continue
        chosen = logits.detach().topk(min(top_k, experts), dim=-1).indices.reshape(-1)
        load = torch.bincount(chosen, minlength=experts).float()
        load = load / load.sum().clamp_min(1)
        entropy = -(load * load.clamp_min(1e-12).log()).sum()
        values.append(entropy / math.log(experts))
    if not values:
        return torch.zeros(())
    return torch.stack(values).mean()


def routing_change(
    clean_router_logits: Sequence[torch.Tensor], adv_router_logits: Sequence[torch.Tensor], top_k: int
) -> torch.Tensor:
    """1 − IoU of the selected top-k expert sets, clean vs adversarial, averaged over units, samples and layers.

    The same definition as `hf_videomoe.attacks.diagnostics.routing_change`, but computed from router logits that
    are already at hand (no extra forward pass). A scalar tensor.
    """
    changes = []
    for clean, adv in zip(clean_router_logits, adv_router_logits):
        experts = clean.shape[-1]
        k = min(top_k, experts)
        clean_sel = F.one_hot(clean.detach().topk(k, dim=-1).indices, experts).sum(-2).bool()
        adv_sel = F.one_hot(adv.detach().topk(k, dim=-1).indices, experts).sum(-2).bool()
        iou = (clean_sel & adv_sel).sum(-1).float() / (clean_sel | adv_sel).sum(-1).float()
        changes.append((1 - iou).mean())
    return torch.stack(changes).mean()


def split_router_logits(
    router_logits: Iterable[torch.Tensor], first: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Split router logits of a concatenated ``[clean, adversarial]`` batch into the two halves."""
    router_logits = tuple(router_logits)
    return tuple(r[:first] for r in router_logits), tuple(r[first:] for r in router_logits)


def trades_adversarial(
    model: nn.Module,
    pixel_values: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None,
    norm: str,
    seed: int,
    logits_fn,
) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on ``KL(f(x) ‖ f(x'))`` from ``x + 0.001·N(0, I)`` (Zhang et al., 2019).

    ``model`` is run in eval mode with frozen parameters (restored afterwards); ``logits_fn(model, x)`` returns the
    logits. Returns the adversarial pixels (detached, inside the ε-ball and [0, 1]).
    """
    x = pixel_values.detach()
    if steps == 0 or eps == 0:
        return x.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with attack_mode(model, grad=True):
        with torch.no_grad():
            clean_logits = logits_fn(model, x)
        delta = project(0.001 * noise, x, eps, norm, (0.0, 1.0))
        for _ in range(steps):
            x_adv = (x + delta).requires_grad_(True)
            loss = kl_divergence(clean_logits, logits_fn(model, x_adv)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            if norm == "linf":
                direction = grad.sign()
            else:
                flat = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-12)
                direction = grad / flat.reshape(-1, *([1] * (grad.ndim - 1)))
            delta = project(delta + step_size * direction, x, eps, norm, (0.0, 1.0)).detach()
    return (x + delta).clamp(0.0, 1.0).detach()
