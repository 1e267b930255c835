"""Sparse MoE block, auxiliary losses, routing control and upcycling shared by the MoE video models."""

from .modeling_moe import (
    ROUTER_GRANULARITIES,
    MoeExperts,
    MoeRouter,
    SparseMoeBlock,
    compute_aux_loss,
    load_balancing_loss,
    naive_experts_forward,
    router_z_loss,
    sharpened_balance_loss,
)
from .routing import (
    clip_router_probabilities,
    expert_parameters,
    force_experts,
    is_moe_model,
    moe_blocks,
    named_expert_parameters,
    named_router_parameters,
    router_parameters,
    router_probabilities,
    selected_experts,
)
from .upcycling import upcycle_mlp

__all__ = [
    "ROUTER_GRANULARITIES",
    "MoeExperts",
    "MoeRouter",
    "SparseMoeBlock",
    "clip_router_probabilities",
    "compute_aux_loss",
    "expert_parameters",
    "force_experts",
    "is_moe_model",
    "load_balancing_loss",
    "moe_blocks",
    "naive_experts_forward",
    "named_expert_parameters",
    "named_router_parameters",
    "router_parameters",
    "router_probabilities",
    "router_z_loss",
    "selected_experts",
    "sharpened_balance_loss",
    "upcycle_mlp",
]
