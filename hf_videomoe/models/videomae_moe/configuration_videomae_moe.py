"""VideoMAE-MoE configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import VideoMAEConfig

from ...moe.configuration_moe import MoeConfigFields, validate_moe_fields, validate_num_labels
from ..common import IMAGENET_MEAN, IMAGENET_STD


@strict
class VideoMAEMoeConfig(VideoMAEConfig, MoeConfigFields):
    r"""
    Configuration of a VideoMAE encoder whose MLPs (in ``moe_layers``) are sparse Mixtures of Experts. All
    [`~transformers.VideoMAEConfig`] fields apply; the extra ones are:

    num_experts (`int`, defaults to 4): experts per MoE layer.
    num_experts_per_tok (`int`, defaults to 1): top-k experts per routing unit (1 = the paper's hard top-1).
    moe_layers (`list[int]`, *optional*): indices of layers whose MLP is an MoE; `None` means every layer.
    router_granularity (`str`, defaults to `"token"`): `"token"`, `"frame"` (one decision per tubelet time step,
        shared by its tokens), `"clip"` (one decision per video in every MoE layer) or `"model"` (the paper's
        mixture: the first MoE layer's router decides once per video and every MoE layer follows that decision, so
        expert `i` is one whole path E_i(x); the later MoE layers have no router).
    router_gate (`str`, defaults to `"straight_through"`): how the task loss reaches the router. Every gate has the
        same forward value (top-k probabilities renormalised over the selected experts, 1 at top-1), so upcycling is
        exact; `"straight_through"` passes the gradient of the selected probabilities, `"switch"` the Switch
        Transformer gate's (of `log p` at top-1), `"renormalize"` none at top-1 (the router then learns only from the
        auxiliary losses). See docs/METHOD.md for the measurement behind the default.
    router_aux_loss_coef (`float`, defaults to 0.01): weight of the Switch load-balancing loss in `loss`.
    router_z_loss_coef (`float`, defaults to 0.001): weight of the router z-loss in `loss`.
    router_jitter_noise (`float`, defaults to 0.0): multiplicative uniform noise on router inputs, training only.
    output_router_logits (`bool`, defaults to `True`): return router logits and compute `aux_loss`. Attacks and
        the trainers need them; turn off only for plain inference.
    image_mean, image_std (`list[float]`): per-channel statistics used *inside* `forward` to normalise pixel values
        given in [0, 1].

    Invalid settings (top-k above `num_experts`, unknown granularity, `moe_layers` out of range, `num_frames` not a
    multiple of `tubelet_size` or `image_size` not a multiple of `patch_size`, which would drop input, ...) raise
    `ValueError` when the config is built (or loaded with `from_pretrained`).

    Example:

    ```python
    >>> from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification
    >>> config = VideoMAEMoeConfig(image_size=32, patch_size=8, num_frames=8, hidden_size=64, num_hidden_layers=2,
    ...                            num_attention_heads=2, intermediate_size=128, num_labels=8)
    >>> model = VideoMAEMoeForVideoClassification(config)
    ```"""

    model_type = "videomae_moe"
    # Outputs that are not predictions: plain `Trainer.evaluate` / `predict` leave them out, so a standard
    # `compute_metrics` (`np.argmax(predictions, axis=1)`) gets the logits alone.
    keys_to_ignore_at_inference = ["aux_loss", "router_logits", "hidden_states", "attentions"]

    def __post_init__(self, **kwargs):
        if self.image_mean is None:
            self.image_mean = list(IMAGENET_MEAN)
        if self.image_std is None:
            self.image_std = list(IMAGENET_STD)
        validate_moe_fields(self)
        super().__post_init__(**kwargs)
        validate_num_labels(self)


__all__ = ["VideoMAEMoeConfig"]
