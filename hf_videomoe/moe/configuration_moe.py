"""The MoE fields both model configs share, and their validation (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass

ROUTER_GRANULARITIES = ("token", "frame", "clip", "model")
# How the task loss reaches the router. All gates have the same forward value (the top-k probabilities renormalised
# over the selected experts, 1 at top-1), so upcycling stays exact; they differ only in the router's gradient.
ROUTER_GATES = ("straight_through", "switch", "renormalize")


@dataclass
class MoeConfigFields:
    """The MoE fields of [`VideoMAEMoeConfig`] and [`TimesformerMoeConfig`] (documented there), declared once; the
    configs inherit them next to their transformers base config and call [`validate_moe_fields`]."""

    num_experts: int = 4
    num_experts_per_tok: int = 1
    moe_layers: list[int] | None = None
    router_granularity: str = "token"
    router_gate: str = "straight_through"
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001
    router_jitter_noise: float = 0.0
    output_router_logits: bool = True
    image_mean: list[float] | None = None
    image_std: list[float] | None = None


def validate_moe_fields(config) -> None:
    """Raise `ValueError` for MoE settings that cannot work; normalise ``moe_layers`` to a sorted list."""
    if not isinstance(config.num_experts, int) or config.num_experts < 1:
        raise ValueError(f"`num_experts` must be a positive int, got {config.num_experts!r}.")
    if not isinstance(config.num_experts_per_tok, int) or not 1 <= config.num_experts_per_tok <= config.num_experts:
        raise ValueError(
            f"`num_experts_per_tok` (top-k) must be an int in [1, num_experts={config.num_experts}], "
            f"got {config.num_experts_per_tok!r}."
        )
    if config.router_granularity not in ROUTER_GRANULARITIES:
        raise ValueError(
            f"`router_granularity` must be one of {ROUTER_GRANULARITIES}, got {config.router_granularity!r}."
        )
    if config.router_gate not in ROUTER_GATES:
        raise ValueError(f"`router_gate` must be one of {ROUTER_GATES}, got {config.router_gate!r}.")
    num_layers = config.num_hidden_layers
    if config.moe_layers is None:
        config.moe_layers = list(range(num_layers))
    layers = [int(i) for i in config.moe_layers]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"`moe_layers` indices {bad} are out of range for num_hidden_layers={num_layers}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"`moe_layers` has duplicate indices: {layers}.")
    config.moe_layers = sorted(layers)
    for name in ("router_aux_loss_coef", "router_z_loss_coef", "router_jitter_noise"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    if config.router_jitter_noise >= 1:
        raise ValueError(f"`router_jitter_noise` must be < 1, got {config.router_jitter_noise}.")
    for name in ("image_mean", "image_std"):
        value = getattr(config, name)
        if len(value) != config.num_channels:
            raise ValueError(f"`{name}` needs {config.num_channels} values (one per channel), got {list(value)}.")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise ValueError(f"`{name}` must hold finite numbers, got {list(value)}.")

    if any(s <= 0 for s in config.image_std):
        raise ValueError(f"`image_std` must be positive, got {list(config.image_std)}.")
    validate_input_tiling(config)


def _sizes(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def validate_input_tiling(config) -> None:
    """Every frame and pixel must reach the logits: ``num_frames`` a multiple of ``tubelet_size`` (VideoMAE) and the
    image size a multiple of ``patch_size`` (both models); the patch embedding would silently drop the remainder."""
    frames, tubelet = getattr(config, "num_frames", None), getattr(config, "tubelet_size", None)
    if isinstance(frames, int) and isinstance(tubelet, int) and tubelet > 0 and frames % tubelet:
        raise ValueError(
            f"`num_frames`={frames} is not divisible by `tubelet_size`={tubelet}: the last {frames % tubelet} frame(s) "
            f"would never reach the logits; expected a multiple of {tubelet} (e.g. {frames - frames % tubelet or tubelet}"
            f" or {frames - frames % tubelet + tubelet})."
        )
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if image is None or patch is None:
        return
    for axis, size, step in zip(("height", "width"), _sizes(image), _sizes(patch)):
        if isinstance(size, int) and isinstance(step, int) and step > 0 and size % step:
            raise ValueError(
                f"`image_size`={image} is not divisible by `patch_size`={patch} ({axis} {size} % {step} = "
                f"{size % step}): the last {size % step} pixel rows / columns would never reach the logits; expected a "
                f"multiple of {step} (e.g. {size - size % step or step} or {size - size % step + step})."
            )


def owns_router(config, layer_index: int) -> bool:
    """Whether MoE layer ``layer_index`` has its own router: always, except with ``router_granularity="model"``,
    where the first MoE layer's router decides once per clip for every MoE layer."""
    if config.router_granularity != "model":
        return True
    return bool(config.moe_layers) and layer_index == min(config.moe_layers)


def validate_num_labels(config) -> None:
    """``num_labels`` must be positive (0 would silently turn the classifier head into an identity that returns
    hidden-size logits). Call after transformers' ``__post_init__``, which derives it from ``id2label``."""
    num_labels = config.num_labels
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"`num_labels` must be a positive int (the number of classes), got {num_labels!r}.")
