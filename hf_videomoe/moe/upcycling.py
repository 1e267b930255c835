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


EXPERT_INITS = ("copy", "drop_upcycling", "noise")


def check_expert_init(method: str, ratio: float) -> None:
    """`ValueError` unless ``method`` is one of `EXPERT_INITS` and ``ratio`` a number in [0, 1]."""
    if method not in EXPERT_INITS:
        raise ValueError(f"`expert_init` must be one of {EXPERT_INITS}, got {method!r}.")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"`expert_init_ratio` must be a number in [0, 1], got {ratio!r}.")


@torch.no_grad()
def diversify_experts(block: SparseMoeBlock, method: str = "drop_upcycling", ratio: float = 0.5, seed: int = 0) -> None:
    """Make the (identical) upcycled experts of ``block`` differ, so that routing has something to choose between.

    Args:
        block: a block whose experts were just filled by [`upcycle_mlp`].
        method: ``"drop_upcycling"`` (Nakamura et al., ICLR 2025): in each expert a different random ``ratio`` of the
            intermediate neurons is re-initialised, their up-projection rows, biases and down-projection columns
            drawn from a normal with the mean and std of the dense matrix they replace, so every expert keeps
            ``1 - ratio`` of the dense knowledge and starts specialised elsewhere; ``"noise"``: every expert weight
            gets independent Gaussian noise of ``ratio`` times its matrix's std; ``"copy"``: nothing (exact upcycling).
        ratio: the re-initialised fraction of neurons (``drop_upcycling``) or the relative noise scale (``noise``).
        seed: seeds the draw, so upcycling is reproducible.

    Unlike ``"copy"``, both methods change the function: the upcycled model no longer equals the dense one.
    """
    check_expert_init(method, ratio)
    if method == "copy" or ratio == 0:
        return
    experts = block.experts
    generator = torch.Generator().manual_seed(int(seed))

    def gaussian(reference: torch.Tensor, shape, mean: bool) -> torch.Tensor:
        """Draws with ``reference``'s std (and mean, if ``mean``), on its device and dtype."""
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        ref = reference.float()
        std = ref.std().nan_to_num(0.0) if ref.numel() > 1 else ref.new_zeros(())
        center = ref.mean() if mean else ref.new_zeros(())
        return (center.cpu() + std.cpu() * values).to(reference.device, reference.dtype)

    for e in range(block.num_experts):
        up, up_bias = experts.up_proj.data[e], experts.up_proj_bias.data[e]
        down = experts.down_proj.data[e]
        if method == "noise":
            for tensor in (up, up_bias, down, experts.down_proj_bias.data[e]):
                tensor.add_(float(ratio) * gaussian(tensor, tensor.shape, mean=False))
            continue
        num_dropped = int(round(float(ratio) * experts.intermediate_dim))
        if num_dropped == 0:
            continue
        dropped = torch.randperm(experts.intermediate_dim, generator=generator)[:num_dropped].to(up.device)
        up[dropped] = gaussian(up, (num_dropped, up.shape[1]), mean=True)
        up_bias[dropped] = gaussian(up_bias, (num_dropped,), mean=True)
        down[:, dropped] = gaussian(down, (down.shape[0], num_dropped), mean=True)
