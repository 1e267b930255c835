"""The sparse Mixture-of-Experts MLP shared by VideoMAE-MoE and TimeSformer-MoE.

A block replaces a transformer layer's MLP (``dense -> act -> dense``) with ``num_experts`` copies of that MLP and a
linear router. Routing decisions are made per *routing unit*: a token, a frame (all tokens of one frame share one
decision) or a clip (one decision per video); with model-level routing one clip decision, made by the first MoE
layer's router, is followed by every MoE layer. The router runs in float32 whatever the model dtype, because top-k on
bf16 logits flips decisions between otherwise identical runs. The gate (``router_gate``) decides how the task loss
reaches the router; every gate has the same forward value, so upcycled models stay exact.

There is no capacity factor and no token dropping: every token is computed by the experts it is routed to, so in eval
mode a clip's output does not depend on what else is in the batch (attacks and per-sample evaluation rely on that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.integrations.moe import use_experts_implementation

from .configuration_moe import ROUTER_GATES


@dataclass
class RoutingDecision:
    """One MoE layer's routing for a batch, at routing-unit level.

    Attributes:
        router_logits: ``(batch, num_units, num_experts)`` float32 logits of the router that decided.
        top_k_index: ``(batch, num_units, top_k)`` selected experts.
        top_k_weights: ``(batch, num_units, top_k)`` gate values (sum to 1 over the selected experts).
    """

    router_logits: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weights: torch.Tensor


def gate_weights(router_logits: torch.Tensor, top_k: int, gate: str = "straight_through"):
    """Top-k selection and gate values ``(top_k_index, top_k_weights)`` for ``router_logits`` (last dim = experts).

    The value is always ``p_topk / sum(p_topk)`` (1 for top-1), so an upcycled model with identical experts computes
    the dense MLP exactly. The gradient differs:

    * ``"straight_through"``: ``value + p_topk - stop_grad(p_topk)``, i.e. the gradient of the raw probabilities of
      the selected experts (the straight-through estimator of a hard gate).
    * ``"switch"``: ``p_topk / stop_grad(sum(p_topk))``, the Switch Transformer gate ``p * E(x)`` rescaled by a
      constant so that its value is the renormalised weight (top-1: gradient of ``log p``).
    * ``"renormalize"``: the plain renormalised weights. At top-1 these are ``p / p = 1`` and the task loss sends the
      router no gradient at all (routers then learn only from auxiliary losses); kept for comparison.
    """
    if gate not in ROUTER_GATES:
        raise ValueError(f"`router_gate` must be one of {ROUTER_GATES}, got {gate!r}.")
    router_probs = router_logits.softmax(dim=-1)
    top_k_probs, top_k_index = torch.topk(router_probs, top_k, dim=-1)
    mass = top_k_probs.sum(dim=-1, keepdim=True)
    if gate == "renormalize" or not torch.is_grad_enabled():  # no gradient to shape: the values are all the same
        return top_k_index, top_k_probs / mass
    if gate == "switch":
        return top_k_index, top_k_probs / mass.detach()
    # straight_through; (p - p) first: it is exactly 0 in the forward pass, so the value is bit-identical to renormalize.
    return top_k_index, (top_k_probs - top_k_probs.detach()) + (top_k_probs / mass).detach()


class MoeRouter(nn.Module):
    """Linear router ``hidden_size -> num_experts`` evaluated in float32.

    Returns the raw router logits of shape ``(batch, num_units, num_experts)``; selection happens in
    [`SparseMoeBlock`] so that forced routing and jitter live in one place.
    """

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, unit_states: torch.Tensor) -> torch.Tensor:
        # Autocast (Trainer's --bf16 / --fp16) would run this matmul in half precision despite the casts.
        with torch.autocast(device_type=unit_states.device.type, enabled=False):
            return F.linear(unit_states.float(), self.weight.float())


@use_experts_implementation(has_bias=True, has_gate=False)
class MoeExperts(nn.Module):
    """``num_experts`` ViT MLPs (``up_proj -> act -> down_proj``, with biases) stored as stacked 3-D parameters.

    The layout (``up_proj``: ``(E, intermediate, hidden)``, ``down_proj``: ``(E, hidden, intermediate)``) is the one
    transformers' experts kernels expect, so ``experts_implementation="grouped_mm" | "batched_mm" | "eager"`` selects
    the kernel through the model config exactly as for Mixtral. ``forward`` below is the eager path: a loop over the
    experts that received tokens, computing each expert only on its own tokens.
    """

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.num_experts
        self.hidden_dim = config.hidden_size
        self.intermediate_dim = config.intermediate_size
        self.up_proj = nn.Parameter(torch.empty(self.num_experts, self.intermediate_dim, self.hidden_dim))
        self.up_proj_bias = nn.Parameter(torch.zeros(self.num_experts, self.intermediate_dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        self.down_proj_bias = nn.Parameter(torch.zeros(self.num_experts, self.hidden_dim))
        self.act_fn = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        std = getattr(config, "initializer_range", 0.02)
        nn.init.trunc_normal_(self.up_proj, std=std)
        nn.init.trunc_normal_(self.down_proj, std=std)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        # One sort groups the (token, slot) pairs by expert and one gather lays their states out contiguously; each
        # expert that received tokens then runs one matmul pair on exactly its rows, and one index_add sums the
        # weighted results back per token. A single host sync (the per-expert counts). On CPU this is faster than
        # `grouped_mm` and `batched_mm` (see docs/bench_moe.md).
        top_k = top_k_index.shape[-1]
        flat_index = top_k_index.reshape(-1)
        order = torch.argsort(flat_index, stable=True)
        counts = torch.bincount(flat_index, minlength=self.num_experts).tolist()
        token_of_slot = order // top_k if top_k > 1 else order
        routed = hidden_states.index_select(0, token_of_slot).split(counts)
        outputs = []
        for expert_idx, current in enumerate(routed):
            if current.shape[0] == 0:
                continue
            current = F.linear(current, self.up_proj[expert_idx], self.up_proj_bias[expert_idx])
            current = self.act_fn(current)
            outputs.append(F.linear(current, self.down_proj[expert_idx], self.down_proj_bias[expert_idx]))
        final_hidden_states = torch.zeros_like(hidden_states)
        if not outputs:
            return final_hidden_states
        expert_output = torch.cat(outputs)
        expert_output = expert_output * top_k_weights.reshape(-1)[order, None].to(expert_output.dtype)
        return final_hidden_states.index_add_(0, token_of_slot, expert_output.to(final_hidden_states.dtype))


def naive_experts_forward(
    experts: MoeExperts, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """Reference implementation: every expert on every token, then a weighted sum of the selected ones.

    Used by the tests to check the sparse kernels; never used for real work (it costs ``num_experts`` times more).
    """
    up = torch.einsum("nd,eid->nei", hidden_states, experts.up_proj) + experts.up_proj_bias
    down = torch.einsum("nei,edi->ned", experts.act_fn(up), experts.down_proj) + experts.down_proj_bias
    selected = torch.gather(down, 1, top_k_index[..., None].expand(-1, -1, down.shape[-1]))
    return (selected * top_k_weights[..., None].to(selected.dtype)).sum(dim=1)


class SparseMoeBlock(nn.Module):
    """Router + experts replacing one transformer MLP.

    Args:
        config: a model config carrying ``hidden_size``, ``intermediate_size``, ``hidden_act``, ``num_experts``,
            ``num_experts_per_tok``, ``router_jitter_noise``, ``router_gate``.
        owns_router: whether this block has a router. With ``router_granularity="model"`` only the first MoE layer
            has one; the later layers reuse its decision (``shared_routing``), so expert ``i`` is one coherent path.

    Forward inputs are the (already layer-normed) hidden states ``(batch, seq_len, hidden)``, ``unit_index``, a
    ``(seq_len,)`` long tensor mapping every token to its routing unit (see the models' ``routing_units``), and
    ``shared_routing``, the [`RoutingDecision`] of an earlier layer for blocks without a router. The router sees the
    mean hidden state of each unit; all tokens of a unit share its top-k experts and weights.

    Returns ``(hidden_states, decision)``: the block output and its [`RoutingDecision`], whose ``router_logits``
    (``(batch, num_units, num_experts)``, float32) are what the models return per MoE layer.

    Routing controls (set by the context managers of `hf_videomoe.moe.routing`, applied in this order): a random
    ``random_routing`` generator replaces the router's choice by uniformly random experts (router-owning blocks only,
    so a model-level decision stays shared); ``forced_expert`` sends every unit to one expert with weight 1;
    ``routing_override`` replaces the decision by a recorded one; ``routing_record`` (a list) receives every decision.
    """

    def __init__(self, config, owns_router: bool = True):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.gate = getattr(config, "router_gate", "straight_through")
        self.router = MoeRouter(config.hidden_size, config.num_experts) if owns_router else None
        self.experts = MoeExperts(config)
        self.forced_expert: int | None = None
        self.random_routing: torch.Generator | None = None
        self.routing_override: tuple[torch.Tensor, torch.Tensor] | None = None
        self.routing_record: list[RoutingDecision] | None = None

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k selection and gate values for ``router_logits`` with this block's gate (see [`gate_weights`])."""
        return gate_weights(router_logits, self.top_k, self.gate)

    def decide(
        self, hidden_states: torch.Tensor, unit_index: torch.Tensor | None, shared_routing: RoutingDecision | None
    ) -> RoutingDecision:
        """This layer's routing decision at unit level, with the routing controls applied."""
        if self.router is None:
            if shared_routing is None:
                raise ValueError("This MoE block has no router of its own and needs the `shared_routing` decision.")
            decision = shared_routing
        else:
            batch_size, _, hidden_dim = hidden_states.shape
            if unit_index is None:
                unit_states = hidden_states
            else:
                num_units = int(unit_index.max()) + 1
                unit_states = hidden_states.new_zeros(batch_size, num_units, hidden_dim).index_add(
                    1, unit_index, hidden_states
                )
                counts = torch.bincount(unit_index, minlength=num_units).to(hidden_states.dtype)
                unit_states = unit_states / counts[None, :, None]
            if self.training and self.jitter_noise > 0:
                noise = torch.empty_like(unit_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
                unit_states = unit_states * noise
            router_logits = self.router(unit_states)
            top_k_index, top_k_weights = self.route(router_logits)
            if self.random_routing is not None:
                scores = torch.rand(router_logits.shape, generator=self.random_routing, device="cpu")
                top_k_index = scores.topk(self.top_k, dim=-1).indices.to(router_logits.device)
            decision = RoutingDecision(router_logits, top_k_index, top_k_weights)
        if self.forced_expert is not None:
            ones = torch.ones_like(decision.router_logits[..., :1])
            decision = RoutingDecision(
                decision.router_logits, torch.full_like(ones, self.forced_expert, dtype=torch.long), ones
            )
        if self.routing_override is not None:
            top_k_index, top_k_weights = self.routing_override
            if top_k_index.shape[:2] != decision.router_logits.shape[:2]:
                raise ValueError(
                    f"routing override of shape {tuple(top_k_index.shape)} does not match this batch's routing units "
                    f"{tuple(decision.router_logits.shape[:2])}."
                )
            decision = RoutingDecision(
                decision.router_logits,
                top_k_index.to(decision.router_logits.device),
                top_k_weights.to(decision.router_logits.device),
            )
        if self.routing_record is not None:
            self.routing_record.append(
                RoutingDecision(decision.router_logits.detach(), decision.top_k_index, decision.top_k_weights.detach())
            )
        return decision

    def forward(
        self,
        hidden_states: torch.Tensor,
        unit_index: torch.Tensor | None = None,
        shared_routing: RoutingDecision | None = None,
    ) -> tuple[torch.Tensor, RoutingDecision]:
        batch_size, seq_len, hidden_dim = hidden_states.shape
        decision = self.decide(hidden_states, unit_index, shared_routing)
        top_k_index, top_k_weights = decision.top_k_index, decision.top_k_weights
        if unit_index is not None:
            top_k_index = top_k_index[:, unit_index]
            top_k_weights = top_k_weights[:, unit_index]

        flat_states = hidden_states.reshape(-1, hidden_dim)
        out = self.experts(
            flat_states, top_k_index.reshape(flat_states.shape[0], -1), top_k_weights.reshape(flat_states.shape[0], -1)
        )
        return out.reshape(batch_size, seq_len, hidden_dim), decision
