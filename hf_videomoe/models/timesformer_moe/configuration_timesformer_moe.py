"""TimeSformer-MoE configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import TimesformerConfig

from ...moe.configuration_moe import MoeConfigFields, validate_moe_fields, validate_num_labels

# TimeSformer checkpoints (facebook/timesformer-*) normalise with 0.45 / 0.225 on every channel.
TIMESFORMER_MEAN = [0.45, 0.45, 0.45]
TIMESFORMER_STD = [0.225, 0.225, 0.225]
SUPPORTED_ATTENTION_TYPES = ("divided_space_time", "joint_space_time")


@strict
class TimesformerMoeConfig(TimesformerConfig, MoeConfigFields):
    r"""
    Configuration of a TimeSformer whose MLPs (in ``moe_layers``) are sparse Mixtures of Experts. All
    [`~transformers.TimesformerConfig`] fields apply; the MoE fields are the same as
    [`VideoMAEMoeConfig`]'s (`num_experts`, `num_experts_per_tok`, `moe_layers`, `router_granularity`,
    `router_gate`, `router_aux_loss_coef`, `router_z_loss_coef`, `router_jitter_noise`, `output_router_logits`, `image_mean`,
    `image_std`). With `router_granularity="frame"` the patch tokens of each frame share one decision and the CLS
    token is routed on its own; with `"clip"` every token of a video shares one decision; with `"model"` one decision per video, made
    by the first MoE layer's router, is shared by every MoE layer.

    `attention_type` must be `"divided_space_time"` (default) or `"joint_space_time"`: transformers' `"space_only"`
    folds frames into the batch dimension (one sample per frame), which breaks per-clip routing, per-clip logits and
    per-clip attack budgets, so it is rejected.

    `drop_path_rate` is re-declared as a float (transformers types it `int`, which rejects any real rate).
    """

    model_type = "timesformer_moe"
    # Outputs that are not predictions: plain `Trainer.evaluate` / `predict` leave them out, so a standard
    # `compute_metrics` (`np.argmax(predictions, axis=1)`) gets the logits alone.
    keys_to_ignore_at_inference = ["aux_loss", "router_logits", "hidden_states", "attentions"]

    drop_path_rate: float | int = 0.0

    def __post_init__(self, **kwargs):
        if self.image_mean is None:
            self.image_mean = list(TIMESFORMER_MEAN)
        if self.image_std is None:
            self.image_std = list(TIMESFORMER_STD)
        if self.attention_type not in SUPPORTED_ATTENTION_TYPES:
            raise ValueError(
                f"TimesformerMoeConfig supports attention_type in {SUPPORTED_ATTENTION_TYPES}, got "
                f"{self.attention_type!r} (space_only treats every frame as a separate sample)."
            )
        validate_moe_fields(self)
        super().__post_init__(**kwargs)
        validate_num_labels(self)


__all__ = ["TimesformerMoeConfig"]
