"""Routing control: find the MoE blocks of a model; force, randomise, record and replay routing decisions; split
router and expert parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .modeling_moe import MoeExperts, MoeRouter, RoutingDecision, SparseMoeBlock


def moe_blocks(model: nn.Module) -> list[SparseMoeBlock]:
    """All [`SparseMoeBlock`]s of ``model`` in layer order (empty for a dense model)."""
    return [module for module in model.modules() if isinstance(module, SparseMoeBlock)]


def is_moe_model(model: nn.Module) -> bool:
    """Whether ``model`` has at least one sparse MoE block (i.e. routers that component attacks can target)."""
    return len(moe_blocks(model)) > 0


def _refuse_checkpointed_training(model: nn.Module, what: str) -> None:
    # Activation checkpointing re-runs each layer in backward: a random draw would differ from the forward's and a
    # record would hold every decision twice.
    if model.training and any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
        raise ValueError(f"{what} cannot run on a model training with activation checkpointing; call `model.eval()`.")


def require_moe(model: nn.Module, what: str) -> list[SparseMoeBlock]:
    """The MoE blocks of ``model``; a `ValueError` naming ``what`` needed them if it has none."""
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError(
            f"{what} needs a Mixture-of-Experts model, but {type(model).__name__} has no SparseMoeBlock. "
            "Upcycle a dense model with `VideoMAEMoeForVideoClassification.from_dense(...)` (or the TimeSformer "
            "equivalent) first."
        )
    return blocks


@contextlib.contextmanager
def _blocks_set(blocks: Sequence[SparseMoeBlock], name: str, values: Sequence):
    """Set the routing control ``name`` of each block to its value inside the ``with`` block, then restore it."""
    previous = [getattr(block, name) for block in blocks]
    try:
        for block, value in zip(blocks, values):
            setattr(block, name, value)
        yield
    finally:
        for block, value in zip(blocks, previous):
            setattr(block, name, value)


@contextlib.contextmanager
def force_experts(model: nn.Module, experts: int | Sequence[int]):
    """Route every unit of every MoE layer to a fixed expert (weight 1) inside the ``with`` block.

    This computes E_i(x), "the model with routing forced to expert i". Router logits are still computed and returned,
    so router objectives keep working while experts are forced.

    Args:
        model: a model with MoE blocks.
        experts: one expert index for all layers, or one index per MoE layer.
    """
    blocks = require_moe(model, "force_experts")
    if isinstance(experts, int):
        experts = [experts] * len(blocks)
    experts = list(experts)
    if len(experts) != len(blocks):
        raise ValueError(f"force_experts got {len(experts)} expert indices for {len(blocks)} MoE layers.")
    for block, expert in zip(blocks, experts):
        if not 0 <= int(expert) < block.num_experts:
            raise ValueError(f"Expert index {expert} is out of range for a block with {block.num_experts} experts.")
    with _blocks_set(blocks, "forced_expert", [int(expert) for expert in experts]):
        yield model


@contextlib.contextmanager
def random_routing(model: nn.Module, seed: int = 0):
    """Send every routing unit to uniformly random experts inside the ``with`` block (the gate values are kept).

    The control for "does the learned routing matter": a model whose accuracy does not drop under random routing has
    routers whose decisions carry no information. With ``router_granularity="model"`` one random path is drawn per
    clip and shared by every MoE layer. Deterministic for a given ``seed`` and call sequence.
    """
    blocks = require_moe(model, "random_routing")
    _refuse_checkpointed_training(model, "random_routing")
    generator = torch.Generator().manual_seed(int(seed))
    with _blocks_set(blocks, "random_routing", [generator] * len(blocks)):
        yield model


@contextlib.contextmanager
def record_routing(model: nn.Module):
    """Collect the routing decisions of every forward pass inside the ``with`` block.

    Yields a list that receives one list of [`RoutingDecision`]s (one per MoE layer, in layer order) per forward
    pass, after any forcing or override. Replay one with [`override_routing`].
    """
    blocks = require_moe(model, "record_routing")
    _refuse_checkpointed_training(model, "record_routing")
    per_block: list[list[RoutingDecision]] = [[] for _ in blocks]
    passes: list[list[RoutingDecision]] = []
    try:
        with _blocks_set(blocks, "routing_record", per_block):
            yield passes
    finally:
        passes.extend([list(decisions) for decisions in zip(*per_block)])


@contextlib.contextmanager
def override_routing(model: nn.Module, decisions: Sequence[RoutingDecision]):
    """Replace every MoE layer's routing by recorded ``decisions`` (one per MoE layer) inside the ``with`` block.

    Used for the frozen-routing controls: an adversarial clip evaluated with the clean clip's routing shows how much
    of an attack's damage does *not* go through routing, and a clean clip with the adversarial routing how much does.
    Router logits are still computed (and returned) from the actual input.
    """
    blocks = require_moe(model, "override_routing")
    decisions = list(decisions)
    if len(decisions) != len(blocks):
        raise ValueError(f"override_routing got {len(decisions)} decisions for {len(blocks)} MoE layers.")
    with _blocks_set(blocks, "routing_override", [(d.top_k_index, d.top_k_weights) for d in decisions]):
        yield model


class _RoutersDone(Exception):
    """Raised by the last router's hook to end a forward pass whose later layers nobody reads."""


def router_logits_only(model: nn.Module, forward) -> tuple[torch.Tensor, ...]:
    """The router logits of ``forward()`` (a call that runs ``model``), computing nothing after the last router.

    Objectives and losses that read only router logits (router attacks such as PGD-R, TLA-R, TLGA-R, and J-TLAT's
    router step) do not need the layers after the last router, nor the classifier: the pass stops there, and its
    backward starts there. With model-level routing the only router sits in the first MoE layer, so such a pass costs
    a fraction of a full one. The values are those of the full pass: the same tuple, one entry per MoE layer in layer
    order, a layer without a router of its own repeating the decision it shares.
    """
    blocks = moe_blocks(model)
    owners = [position for position, block in enumerate(blocks) if block.router is not None]
    if not owners:
        raise ValueError(f"router_logits_only needs a Mixture-of-Experts model; {type(model).__name__} has no router.")
    captured: dict[int, torch.Tensor] = {}

    def hook(position):
        def record(module, args, output):
            captured[position] = output
            if position == owners[-1]:
                raise _RoutersDone

        return record

    handles = [blocks[position].router.register_forward_hook(hook(position)) for position in owners]
    try:
        forward()
    except _RoutersDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(owners):
        raise RuntimeError(f"Only {len(captured)} of the model's {len(owners)} routers ran during the forward pass.")
    logits, current = [], None
    for position in range(len(blocks)):
        current = captured.get(position, current)
        logits.append(current)
    return tuple(logits)


def named_router_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every router weight of ``model``."""
    for module_name, module in model.named_modules():
        if isinstance(module, MoeRouter):
            for name, param in module.named_parameters():
                yield f"{module_name}.{name}", param


def named_expert_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every expert weight (stacked up/down projections and biases) of ``model``."""
    for module_name, module in model.named_modules():
        if isinstance(module, MoeExperts):
            for name, param in module.named_parameters():
                yield f"{module_name}.{name}", param


def router_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Router parameters only (J-TLAT step 1 trains these)."""
    for _, param in named_router_parameters(model):
        yield param


def expert_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Expert parameters only (J-TLAT step 2 trains these)."""
    for _, param in named_expert_parameters(model):
        yield param


def router_probabilities(router_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Softmax of each layer's router logits, ``(batch, num_units, num_experts)`` in float32."""
    return [logits.float().softmax(dim=-1) for logits in router_logits]


def clip_router_probabilities(router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Router probabilities averaged over routing units and MoE layers: ``(batch, num_experts)``.

    This is "R(x)" at clip level, used to pick a clip's top-2 experts (J-TLAT step 2) or its weakest expert
    (TLGA-R's guidance target).
    """
    return torch.stack([probs.mean(dim=1) for probs in router_probabilities(router_logits)]).mean(dim=0)


def selected_experts(router_logits: Sequence[torch.Tensor], top_k: int) -> list[torch.Tensor]:
    """Top-k expert indices per layer, ``(batch, num_units, top_k)``."""
    return [torch.topk(logits, top_k, dim=-1).indices for logits in router_logits]
