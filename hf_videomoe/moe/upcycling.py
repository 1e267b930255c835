"""Dense -> MoE upcycling (Komatsuzaki et al., 2023): every expert starts as a copy of the dense MLP."""

from __future__ import annotations

import torch
from torch import nn

from .modeling_moe import SparseMoeBlock


@torch.no_grad()
def upcycle_mlp(block: SparseMoeBlock, up: nn.Linear, down: nn.Linear) -> None:
    """Copy a dense MLP (``up``: hidden->intermediate, ``down``: intermediate->hidden) into every expert of ``block``.

    With identical experts and routing weights renormalised to sum to one, the block computes exactly the dense MLP,
    whatever the router says, so the upcycled model's logits equal the dense model's at initialisation.
    """
    experts = block.experts
    if tuple(up.weight.shape) != tuple(experts.up_proj.shape[1:]) or tuple(down.weight.shape) != tuple(
        experts.down_proj.shape[1:]
    ):
        raise ValueError(
            f"Dense MLP shapes {tuple(up.weight.shape)} / {tuple(down.weight.shape)} do not match the experts' "
            f"{tuple(experts.up_proj.shape[1:])} / {tuple(experts.down_proj.shape[1:])}."
        )
    experts.up_proj.copy_(up.weight.unsqueeze(0).expand_as(experts.up_proj))
    experts.down_proj.copy_(down.weight.unsqueeze(0).expand_as(experts.down_proj))
    experts.up_proj_bias.copy_(up.bias.unsqueeze(0).expand_as(experts.up_proj_bias))
    experts.down_proj_bias.copy_(down.bias.unsqueeze(0).expand_as(experts.down_proj_bias))
