"""Inference cost of video classifiers: forward FLOPs per clip and active / total parameter counts.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass of a random clip in
[0, 1] (eval mode, no grad). Two counting details matter for MoE models:

* The experts kernel ``grouped_mm`` (transformers' default) is invisible to ``FlopCounterMode``, so the MoE experts
  are temporarily switched to the ``"eager"`` implementation while counting (and switched back afterwards). The eager
  path computes each expert on exactly the tokens routed to it, so the count reflects top-k of E experts per token,
  not all experts.
* On CPU, ``scaled_dot_product_attention`` runs ``aten._scaled_dot_product_flash_attention_for_cpu``, which
  ``FlopCounterMode`` does not know either; it is counted with PyTorch's own SDPA formula, so attention FLOPs are the
  same on CPU and GPU.

FLOPs follow PyTorch's convention: a multiply-add counts 2, only matmuls, convolutions and attention are counted
(element-wise ops, norms and softmax are not).

Active parameters are the parameters used to compute one routing unit (a token, frame or clip): all parameters
minus, in every MoE layer, the ``num_experts - top_k`` experts that unit is not routed to, i.e.
``total - sum_layers (E - k) / E * expert_parameters(layer)``. Routers count as active. For a dense model active and
total parameters are equal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import PreTrainedModel

from ..moe import is_moe_model, moe_blocks

__all__ = ["CostReport", "count_cost", "count_parameters", "dense_equivalent_config"]

# MoE fields that a transformers dense config does not have.
_MOE_CONFIG_FIELDS = (
    "num_experts",
    "num_experts_per_tok",
    "moe_layers",
    "router_granularity",
    "router_aux_loss_coef",
    "router_z_loss_coef",
    "router_jitter_noise",
    "output_router_logits",
    "image_mean",
    "image_std",
)


@dataclasses.dataclass
class CostReport:
    """What one forward pass costs.

    Attributes:
        flops: forward FLOPs per clip (multiply-add = 2).
        active_parameters: parameters used per routing unit (total minus unselected experts).
        total_parameters: all parameters of the model.
        input_shape: the shape of one clip, ``(frames, channels, height, width)``.
        batch_size: clips in the counted forward pass (``flops`` is already divided by it).
        flops_by_module: forward FLOPs per clip of every module that did any counted work, keyed by module path
            (``""`` is the whole model).
    """

    flops: int
    active_parameters: int
    total_parameters: int
    input_shape: tuple[int, ...]
    batch_size: int = 1
    flops_by_module: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def active_fraction(self) -> float:
        """``active_parameters / total_parameters``."""
        return self.active_parameters / self.total_parameters if self.total_parameters else 1.0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(active, total)`` parameter counts (see the module docstring for "active")."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for block in moe_blocks(model):
        expert_params = sum(p.numel() for p in block.experts.parameters())
        top_k = 1 if block.forced_expert is not None else block.top_k
        inactive += expert_params * (block.num_experts - top_k) // block.num_experts
    return total - inactive, total


def _clip_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    config = getattr(model, "config", None)
    if config is None or not all(hasattr(config, k) for k in ("num_frames", "num_channels", "image_size")):
        raise ValueError(
            f"count_cost cannot infer the input shape of {type(model).__name__} (it needs `config.num_frames`, "
            "`config.num_channels` and `config.image_size`); pass input_shape=(frames, channels, height, width)."
        )
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    return (config.num_frames, config.num_channels, height, width)


@contextlib.contextmanager
def _eager_experts(model: nn.Module):
    """Temporarily run the experts with the eager kernel (the one ``FlopCounterMode`` sees), then restore.

    The switch goes through transformers' public ``PreTrainedModel.set_experts_implementation`` of the model that owns
    each experts config, found among ``model.modules()``, so a wrapped model (e.g. inside another ``nn.Module``) is
    handled too.
    """
    configs = {id(block.experts.config): block.experts.config for block in moe_blocks(model)}
    owners: dict[int, PreTrainedModel] = {}
    for module in model.modules():  # outermost first: the owner whose switch also reaches its submodels
        if isinstance(module, PreTrainedModel) and id(module.config) in configs:
            owners.setdefault(id(module.config), module)
    # Experts outside any PreTrainedModel (a bare SparseMoeBlock in a custom module) have no public switch: transformers
    # (5.x) reads a config's `experts_implementation` only when the config is built, and its setter afterwards is the
    # private `_experts_implementation`; so their config's internal attribute is set directly, as transformers' own
    # `set_experts_implementation` does.
    orphans = [config for key, config in configs.items() if key not in owners]
    previous = [(owner, owner.get_experts_implementation()) for owner in owners.values()]
    previous_orphans = [(config, config._experts_implementation_internal) for config in orphans]
    try:
        for owner, _ in previous:
            owner.set_experts_implementation("eager")
        for config, _ in previous_orphans:
            config._experts_implementation_internal = "eager"
        yield
    finally:
        for owner, implementation in previous:
            owner.set_experts_implementation(implementation)
        for config, implementation in previous_orphans:
            config._experts_implementation_internal = implementation


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_mapping() -> dict:
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flops
    return mapping


def count_cost(model: nn.Module, input_shape: Sequence[int] | None = None, batch_size: int = 1) -> CostReport:
    """Count forward FLOPs per clip and active / total parameters of a video classifier.

    Works on the MoE models of this package and on dense transformers models (e.g. ``VideoMAEForVideoClassification``,
    ``TimesformerForVideoClassification``) alike. The model's mode (train / eval) and experts implementation are
    restored afterwards; its weights are untouched.

    Args:
        model: a video model taking ``pixel_values`` ``(batch, frames, channels, height, width)``.
        input_shape: one clip's shape ``(frames, channels, height, width)``; defaults to the model config's
            ``(num_frames, num_channels, image_size, image_size)``. A 5-tuple is read as
            ``(batch, frames, channels, height, width)`` and its first entry overrides ``batch_size``.
        batch_size: clips per counted forward pass (the result is per clip; routing of a random batch is only
            representative with top-k routing, which always computes k experts per unit, so 1 is enough).

    Returns:
        A [`CostReport`].
    """
    shape = _clip_shape(model, input_shape)
    if len(shape) == 5:
        batch_size, shape = shape[0], shape[1:]
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (frames, channels, height, width), got {shape}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.rand((batch_size, *shape), generator=generator).to(device=device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        with _eager_experts(model), torch.no_grad():
            counter = FlopCounterMode(display=False, custom_mapping=_custom_flop_mapping())
            with counter:
                model(pixel_values)
    finally:
        model.train(was_training)

    by_module = {}
    root = type(model).__name__
    for name, counts in counter.get_flop_counts().items():
        if name == "Global":
            continue
        path = "" if name == root else name[len(root) + 1 :] if name.startswith(root + ".") else name
        by_module[path] = sum(counts.values()) // batch_size
    active, total = count_parameters(model)
    return CostReport(
        flops=counter.get_total_flops() // batch_size,
        active_parameters=active,
        total_parameters=total,
        input_shape=tuple(shape),
        batch_size=batch_size,
        flops_by_module=dict(sorted(by_module.items())),
    )


def dense_equivalent_config(config, match: str = "active", **overrides):
    """The transformers dense config with the same shape as an MoE config, for "MoE vs dense" comparisons.

    Args:
        config: a ``VideoMAEMoeConfig`` / ``TimesformerMoeConfig`` (a dense ``VideoMAEConfig`` /
            ``TimesformerConfig`` is accepted too and copied).
        match: ``"active"`` keeps ``intermediate_size`` (one expert's width: the dense model with the MoE's
            per-token compute); ``"total"`` multiplies it by ``num_experts`` (the dense model with the MoE's parameter
            count when every layer is an MoE layer, the default).
        overrides: other config fields to set (e.g. ``intermediate_size=...``).

    Returns:
        A ``transformers.VideoMAEConfig`` or ``transformers.TimesformerConfig``; build the model with
        ``VideoMAEForVideoClassification(dense_config)``. Note that dense transformers models take *normalised*
        pixels, whereas the MoE models normalise [0, 1] pixels themselves.
    """
    from transformers import TimesformerConfig, VideoMAEConfig

    if match not in ("active", "total"):
        raise ValueError(f"match must be 'active' or 'total', got {match!r}.")
    for dense_cls in (VideoMAEConfig, TimesformerConfig):
        if isinstance(config, dense_cls):
            break
    else:
        raise TypeError(
            f"dense_equivalent_config expects a VideoMAE or TimeSformer config, got {type(config).__name__}."
        )
    values = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path", *_MOE_CONFIG_FIELDS):
        values.pop(key, None)
    if match == "total":
        values["intermediate_size"] = config.intermediate_size * getattr(config, "num_experts", 1)
    values.update(overrides)
    # transformers types TimesformerConfig.drop_path_rate as int, which rejects any real rate: build with the integer
    # part and set the real value afterwards (the dense model reads it as a float).
    drop_path_rate = values.get("drop_path_rate")
    if dense_cls is TimesformerConfig and isinstance(drop_path_rate, float):
        values["drop_path_rate"] = int(drop_path_rate)
        dense_config = dense_cls(**values)
        if not drop_path_rate.is_integer():
            object.__setattr__(dense_config, "drop_path_rate", drop_path_rate)
        return dense_config
    return dense_cls(**values)


def dense_counterpart(config):
    """A dense classifier of the config's shape with the MoE's active width (for the FLOPs comparison)."""
    from transformers import (
        TimesformerConfig,
        TimesformerForVideoClassification,
        VideoMAEConfig,
        VideoMAEForVideoClassification,
    )

    dense_config = dense_equivalent_config(config, match="active")
    model_cls = VideoMAEForVideoClassification if isinstance(dense_config, VideoMAEConfig) else None
    if isinstance(dense_config, TimesformerConfig):
        model_cls = TimesformerForVideoClassification
    return model_cls(dense_config)


def evaluation_cost(model: nn.Module) -> dict[str, Any]:
    """The report's cost fields: FLOPs and parameters of ``model`` and of its dense counterpart (warnings, no error,
    when a count fails)."""
    out: dict[str, Any] = {}
    try:
        cost = count_cost(model)
        out.update(
            flops=int(cost.flops),
            active_parameters=int(cost.active_parameters),
            total_parameters=int(cost.total_parameters),
        )
    except Exception as err:
        warnings.warn(f"Could not count the cost of {type(model).__name__}: {err}", stacklevel=3)
        return out
    config = getattr(model, "config", None)
    if config is None:
        return out
    if not is_moe_model(model):
        out.update(dense_flops=out["flops"], dense_parameters=out["total_parameters"])
        return out
    try:
        dense = dense_counterpart(config)
        dense_cost = count_cost(dense)
        out.update(dense_flops=int(dense_cost.flops), dense_parameters=int(dense_cost.total_parameters))
        del dense
    except Exception as err:
        warnings.warn(f"Could not count the cost of the dense model of the same shape: {err}", stacklevel=3)
    return out
