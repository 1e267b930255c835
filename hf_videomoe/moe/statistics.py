"""Routing relevance: does the learned routing matter, and how much of an attack's damage goes through it?

A mixture whose routing does not matter is not a mixture: claims about routers or experts only mean something on a
model whose learned routing beats random routing and whose expert paths differ. These functions compute the controls
every report carries:

* clean accuracy with the model's own routing, with every routing unit sent to a random expert, and with every unit
  forced to expert ``i`` (with ``router_granularity="model"`` that is the whole path E_i(x));
* the frozen-routing controls of an attack: the adversarial clip with the routing held at the clean decisions (the
  damage that does *not* go through routing) and the clean clip with the adversarial routing (the damage routing
  alone does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .routing import force_experts, moe_blocks, override_routing, random_routing, record_routing

__all__ = [
    "expert_load",
    "expert_usage_entropy",
    "frozen_routing_predictions",
    "logits_of",
    "relevance_predictions",
    "routing_change_per_layer",
    "routing_relevance",
    "summarize_relevance",
]


# The one home of the routing statistics that attacks (diagnostics), training (logged metrics) and evaluation (report)
# all compute from router logits.


def expert_load(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """How many routing slots each expert receives: ``(num_experts,)`` counts of the top-``top_k`` selections."""
    num_experts = router_logits.shape[-1]
    selected = router_logits.detach().topk(min(top_k, num_experts), dim=-1).indices.reshape(-1)
    return torch.bincount(selected, minlength=num_experts)


def expert_usage_entropy(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """Normalised entropy of the expert load, averaged over MoE layers: 1 for perfectly balanced routing, 0 when every
    unit goes to the same expert. A scalar tensor."""
    values = []
    for logits in router_logits:
        num_experts = logits.shape[-1]
        if num_experts < 2:
            continue
        load = expert_load(logits, top_k).float()
        load = load / load.sum().clamp_min(1)
        values.append(-(load * load.clamp_min(1e-12).log()).sum() / math.log(num_experts))
    if not values:
        return torch.zeros(())
    return torch.stack(values).mean()


def routing_change_per_layer(
    clean_router_logits: Sequence[torch.Tensor], adv_router_logits: Sequence[torch.Tensor], top_ks: Sequence[int]
) -> torch.Tensor:
    """``(batch, layers)``: 1 − the IoU of the selected top-k expert sets, clean vs adversarial, averaged over each
    sample's routing units. 0 means identical routing; with top-1 it is the fraction of units whose expert changed."""
    per_layer = []
    for clean, adv, top_k in zip(clean_router_logits, adv_router_logits, top_ks):
        num_experts = clean.shape[-1]
        k = min(top_k, num_experts)
        clean_selected = nn.functional.one_hot(clean.detach().topk(k, dim=-1).indices, num_experts).sum(-2).bool()
        adv_selected = nn.functional.one_hot(adv.detach().topk(k, dim=-1).indices, num_experts).sum(-2).bool()
        iou = (clean_selected & adv_selected).sum(-1).float() / (clean_selected | adv_selected).sum(-1).float()
        per_layer.append(1 - iou.mean(dim=1))
    return torch.stack(per_layer, dim=1)


def logits_of(outputs) -> torch.Tensor:
    """The logits of a classifier's outputs: a ``ModelOutput`` with ``logits``, a tuple whose first item they are, or
    the logits tensor itself (a plain module, as the attacks accept)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return outputs.logits if hasattr(outputs, "logits") else outputs[0]


def _predict(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    return logits_of(model(pixel_values=pixel_values)).argmax(dim=-1)


@torch.no_grad()
def relevance_predictions(model: nn.Module, pixel_values: torch.Tensor, seed: int = 0) -> dict[str, list]:
    """Predictions of ``model`` (in its current mode) on one batch under random routing and on each forced path.

    Returns ``{"random": [pred per clip], "forced": [[pred per clip] per expert]}``.
    """
    blocks = moe_blocks(model)
    num_experts = blocks[0].num_experts if blocks else 0
    with random_routing(model, seed):
        random_pred = _predict(model, pixel_values).tolist()
    forced = []
    for expert in range(num_experts):
        with force_experts(model, expert):
            forced.append(_predict(model, pixel_values).tolist())
    return {"random": random_pred, "forced": forced}


def recorded_routing(model: nn.Module, pixel_values: torch.Tensor) -> list:
    """The routing decisions (one [`RoutingDecision`] per MoE layer) of one forward pass on ``pixel_values``."""
    with record_routing(model) as passes:
        model(pixel_values=pixel_values)
    return passes[0]


@torch.no_grad()
def frozen_routing_predictions(
    model: nn.Module,
    clean_pixels: torch.Tensor,
    adv_pixels: torch.Tensor,
    clean_routing: Sequence | None = None,
    adv_routing: Sequence | None = None,
) -> dict[str, list]:
    """Predictions that split an attack's effect into what goes through routing and what does not.

    Returns ``{"adv_input_clean_routing": [...], "clean_input_adv_routing": [...]}``: the adversarial clips evaluated
    with every MoE layer's routing held at the clean clips' decisions, and the clean clips evaluated with the
    adversarial clips' decisions. ``clean_routing`` / ``adv_routing``: those decisions when the caller recorded them
    already (with [`~hf_videomoe.moe.record_routing`]), which saves a forward pass each.
    """
    clean_routing = recorded_routing(model, clean_pixels) if clean_routing is None else clean_routing
    adv_routing = recorded_routing(model, adv_pixels) if adv_routing is None else adv_routing
    with override_routing(model, clean_routing):
        adv_clean_routing = _predict(model, adv_pixels).tolist()
    with override_routing(model, adv_routing):
        clean_adv_routing = _predict(model, clean_pixels).tolist()
    return {"adv_input_clean_routing": adv_clean_routing, "clean_input_adv_routing": clean_adv_routing}


def _paired_difference(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, float]:
    """Mean and standard error of the per-clip difference ``a - b`` of two correctness vectors."""
    n = len(a)
    diffs = [int(x) - int(y) for x, y in zip(a, b)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return mean, math.sqrt(var / n)


def summarize_relevance(
    labels: Sequence[int], learned: Sequence[int], random: Sequence[int], forced: Sequence[Sequence[int]]
) -> dict:
    """Accuracies and paired differences from per-clip predictions.

    Returns a dict with ``learned``, ``random`` (accuracies), ``forced`` (accuracy per expert path),
    ``learned_minus_random`` and its standard error ``learned_minus_random_se`` (paired over clips),
    ``forced_spread`` (best minus worst forced path), ``forced_disagreement`` (the fraction of clips on which two
    paths predict different classes, averaged over pairs of paths: 0 for identical experts, whatever their accuracy)
    and ``forced_oracle`` (the fraction of clips some path classifies correctly), and ``num_samples``.

    The spread compares the paths' overall levels; the disagreement and the oracle show whether they differ in
    *which* clips they get right, which is what a mixture of balanced specialists does.
    """
    n = len(labels)
    if n == 0:
        raise ValueError("summarize_relevance needs at least one labelled clip.")
    learned_ok = [p == y for p, y in zip(learned, labels)]
    random_ok = [p == y for p, y in zip(random, labels)]
    forced_acc = [sum(p == y for p, y in zip(preds, labels)) / n for preds in forced]
    diff, se = _paired_difference(learned_ok, random_ok)
    pairs = [(a, b) for i, a in enumerate(forced) for b in forced[i + 1 :]]
    disagreement = sum(sum(p != q for p, q in zip(a, b)) / n for a, b in pairs) / len(pairs) if pairs else 0.0
    oracle = sum(any(preds[i] == y for preds in forced) for i, y in enumerate(labels)) / n if forced else 0.0
    return {
        "learned": sum(learned_ok) / n,
        "random": sum(random_ok) / n,
        "forced": forced_acc,
        "learned_minus_random": diff,
        "learned_minus_random_se": se,
        "forced_spread": (max(forced_acc) - min(forced_acc)) if forced_acc else 0.0,
        "forced_disagreement": disagreement,
        "forced_oracle": oracle,
        "num_samples": n,
    }


@torch.no_grad()
def routing_relevance(
    model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, seed: int = 0, batch_size: int = 32
) -> dict:
    """Routing relevance of ``model`` on a labelled set of clips (see [`summarize_relevance`] for the keys).

    The model is evaluated in eval mode (its mode is restored). ``pixel_values``: ``(N, frames, channels, height,
    width)`` in [0, 1]; ``labels``: ``(N,)`` class indices.
    """
    if not moe_blocks(model):
        raise ValueError(
            f"routing_relevance needs a Mixture-of-Experts model; {type(model).__name__} has no MoE layer."
        )
    if len(pixel_values) != len(labels):
        raise ValueError(f"{len(pixel_values)} clips but {len(labels)} labels.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    learned, random_pred, forced = [], [], None
    try:
        for start in range(0, len(labels), batch_size):
            x = pixel_values[start : start + batch_size].to(device)
            learned += _predict(model, x).tolist()
            preds = relevance_predictions(model, x, seed=seed + start)
            random_pred += preds["random"]
            forced = preds["forced"] if forced is None else [f + p for f, p in zip(forced, preds["forced"])]
    finally:
        model.train(was_training)
    return summarize_relevance(labels.tolist(), learned, random_pred, forced or [])
