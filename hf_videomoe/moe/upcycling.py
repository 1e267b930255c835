"""Dense -> MoE upcycling (Komatsuzaki et al., 2023): every expert starts as a copy of the dense MLP; optional expert
diversification and router clustering so the mixture has something to route between."""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from .modeling_moe import SparseMoeBlock
from .routing import moe_blocks


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


def _spherical_kmeans(points: torch.Tensor, num_clusters: int, num_iterations: int, generator: torch.Generator):
    """Unit-norm centroids of k-means on the unit sphere (cosine similarity), seeded with k-means++.

    A few lines of torch rather than scikit-learn: the clustering must be spherical (a router without bias can only
    express "nearest centroid by angle"), run on the model's device, and not add a dependency for one call.
    """
    num_points = points.shape[0]
    chosen = [int(torch.randint(num_points, (1,), generator=generator))]
    for _ in range(1, num_clusters):
        distance = (1 - (points @ points[chosen].T).max(dim=1).values).clamp_min(0).cpu()
        if float(distance.sum()) <= 0:  # fewer distinct directions than clusters: any point not chosen yet
            distance = torch.ones_like(distance)
        distance[chosen] = 0  # seeds without replacement, so no two clusters start on the same point
        chosen.append(int(torch.multinomial(distance, 1, generator=generator)))
    centroids = points[chosen].clone()
    for _ in range(num_iterations):
        similarity = points @ centroids.T
        assignment = similarity.argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num_clusters)
        updated = nn.functional.normalize(sums, dim=1)
        # An emptied cluster restarts on the point its current cluster fits worst, so that no expert starts dead.
        fit = similarity.gather(1, assignment[:, None]).squeeze(1)
        for cluster in (counts == 0).nonzero().flatten().tolist():
            worst = int(fit.argmin())
            fit[worst] = float("inf")
            updated[cluster] = points[worst]
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


@torch.no_grad()
def cluster_routers(
    model: nn.Module,
    pixel_values: torch.Tensor,
    *,
    batch_size: int = 64,
    num_iterations: int = 50,
    logit_scale: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[list[float]]:
    """Initialise every router so that it sends each routing unit to its nearest k-means cluster (cosine similarity,
    after removing the units' common direction) of the router's own inputs on calibration clips.

    Upcycled routers start random, so early in the mixture phase every expert sees an arbitrary, shifting share of
    the data and all of them stay generalists: routing then hardly matters (docs/routing_relevance.md). Seeding each
    router with clusters of its inputs, as cluster-based routing does (Gururangan et al., 2023, "Scaling Expert
    Language Models with Unsupervised Domain Discovery"), gives every expert a coherent, stable share from the first
    step. Routers are set layer by layer in order, each on the inputs produced by the routers set before it.

    Args:
        model: an MoE video model, e.g. fresh from ``from_dense``.
        pixel_values: ``(num_clips, num_frames, channels, height, width)`` calibration clips (training clips, never
            test clips), at least ``num_experts`` routing units in all.
        batch_size: clips per forward pass.
        num_iterations: at most this many k-means iterations per router.
        logit_scale: the mean standard deviation of the new router logits across experts; sets how confident the
            router starts (its decisions do not depend on it).
        seed: seeds the k-means++ initialisation.
        progress: show a progress bar over the routers.

    Returns:
        For every router in layer order, the fraction of calibration units in each cluster.
    """
    blocks = [block for block in moe_blocks(model) if block.router is not None]
    if not blocks:
        raise ValueError("`cluster_routers` needs an MoE model with at least one router.")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5 or pixel_values.shape[0] == 0:
        raise ValueError(
            "`pixel_values` must be a non-empty tensor of shape (num_clips, num_frames, channels, height, width), got "
            f"{tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__}."
        )
    if not math.isfinite(logit_scale) or logit_scale <= 0:
        raise ValueError(f"`logit_scale` must be a positive number, got {logit_scale!r}.")
    for name, value in (("batch_size", batch_size), ("num_iterations", num_iterations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    model.eval()
    fractions = []
    try:
        for block in tqdm(blocks, desc="clustering routers", unit="router", disable=not progress):
            num_experts = block.router.num_experts
            if num_experts == 1:  # nothing to choose between: no need to route the clips
                fractions.append([1.0])
                continue
            captured = []
            hook = block.router.register_forward_pre_hook(
                lambda _module, args: captured.append(args[0].detach().float().reshape(-1, args[0].shape[-1]))
            )
            try:
                for start in range(0, pixel_values.shape[0], batch_size):
                    model(pixel_values=pixel_values[start : start + batch_size].to(device))
            finally:
                hook.remove()
            units = torch.cat(captured)
            if units.shape[0] < num_experts:
                raise ValueError(
                    f"`cluster_routers` needs at least num_experts={num_experts} routing units, got {units.shape[0]}: "
                    "pass more calibration clips."
                )
            # The units share a large common component (their mean), which would dominate every angle. A bias-free
            # router cannot subtract it, but a router whose weights are orthogonal to it ignores it: cluster the
            # units with their mean direction projected out, so that centroid · unit = centroid · (unit - mean).
            mean_direction = nn.functional.normalize(units.mean(dim=0), dim=0)
            residuals = units - (units @ mean_direction)[:, None] * mean_direction
            if residuals.norm(dim=1).mean() <= 1e-4 * units.norm(dim=1).mean():
                raise ValueError(
                    "The calibration clips give (nearly) identical router inputs, so they have no clusters to route by; "
                    "pass varied training clips."
                )
            directions = nn.functional.normalize(residuals, dim=1)
            centroids = _spherical_kmeans(directions, num_experts, num_iterations, generator)
            similarity = directions @ centroids.T
            # The router sees the unnormalised units: divide by their mean norm so the logits' scale is set by
            # `logit_scale` alone.
            scale = logit_scale / (
                similarity.std(dim=1).mean().clamp_min(1e-6) * residuals.norm(dim=1).mean().clamp_min(1e-6)
            )
            block.router.weight.copy_((centroids * scale).to(block.router.weight.dtype))
            counts = torch.bincount(similarity.argmax(dim=1), minlength=num_experts)
            fractions.append([float(c) / units.shape[0] for c in counts])
    finally:
        model.train(was_training)
    return fractions
