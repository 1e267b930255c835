"""TimeSformer with sparse Mixture-of-Experts MLPs.

Module names follow `transformers.models.timesformer` (``timesformer.embeddings``, ``timesformer.encoder.layer.N.
temporal_attention``, ``classifier``, ...) so dense TimeSformer weights load onto every shared part; an MoE layer
replaces ``intermediate`` + ``output`` with ``mlp``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TimesformerForVideoClassification
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.timesformer.modeling_timesformer import (
    TimeSformerAttention,
    TimesformerDropPath,
    TimesformerEmbeddings,
    TimesformerIntermediate,
    TimesformerOutput,
    TimesformerPreTrainedModel,
)

from ...moe import RoutingDecision, SparseMoeBlock, owns_router
from ..common import MoePreTrainedModelMixin, MoeVideoClassifierMixin, MoeVideoEncoderMixin, init_moe_weights
from ..upcycling import MoeUpcyclingMixin
from .configuration_timesformer_moe import TimesformerMoeConfig


def routing_units(config: TimesformerMoeConfig, device=None) -> torch.Tensor | None:
    """Token -> routing-unit map for TimeSformer's token order ([CLS], then patch row, patch column, frame).

    With ``"frame"`` granularity patch token ``j`` belongs to frame ``j % num_frames`` and the CLS token, which
    summarises all frames, is its own unit (the last one). ``None`` means token routing.
    """
    num_frames = config.num_frames
    num_patch_tokens = (config.image_size // config.patch_size) ** 2 * num_frames
    if config.router_granularity == "token":
        return None
    if config.router_granularity == "frame":
        cls_unit = torch.tensor([num_frames], device=device)
        return torch.cat([cls_unit, torch.arange(num_patch_tokens, device=device) % num_frames])
    return torch.zeros(num_patch_tokens + 1, dtype=torch.long, device=device)  # "clip" and "model"


class TimesformerMoeLayer(GradientCheckpointingLayer):
    """A TimeSformer block whose MLP is either the stock dense one or a [`SparseMoeBlock`] (``is_moe``)."""

    def __init__(self, config: TimesformerMoeConfig, layer_index: int, is_moe: bool, owns_router: bool = True):
        super().__init__()
        drop_path_rate = config.drop_path_rate * layer_index / max(config.num_hidden_layers - 1, 1)
        self.config = config
        self.is_moe = is_moe
        self.attention_type = config.attention_type
        self.drop_path = TimesformerDropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.attention = TimeSformerAttention(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if self.attention_type == "divided_space_time":
            self.temporal_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.temporal_attention = TimeSformerAttention(config)
            self.temporal_dense = nn.Linear(config.hidden_size, config.hidden_size)
        if is_moe:
            self.mlp = SparseMoeBlock(config, owns_router=owns_router)
            self.mlp_dropout = nn.Dropout(config.hidden_dropout_prob)
        else:
            self.intermediate = TimesformerIntermediate(config)
            self.output = TimesformerOutput(config)

    def attention_block(self, hidden_states: torch.Tensor, output_attentions: bool):
        """Attention half of the block with its residual; same computation as transformers' `TimesformerLayer`."""
        if self.attention_type == "joint_space_time":
            attention_outputs = self.attention(
                self.layernorm_before(hidden_states), output_attentions=output_attentions
            )
            hidden_states = hidden_states + self.drop_path(attention_outputs[0])
            return hidden_states, attention_outputs[1] if output_attentions else None

        num_frames = self.config.num_frames
        batch_size, _, hidden_size = hidden_states.shape
        patches_w = self.config.image_size // self.config.patch_size
        patches_h = (hidden_states.size(1) - 1) // num_frames // patches_w

        # Temporal attention over each patch position's frames.
        temporal = hidden_states[:, 1:, :].reshape(batch_size * patches_h * patches_w, num_frames, hidden_size)
        temporal_residual = self.drop_path(self.temporal_attention(self.temporal_layernorm(temporal))[0])
        temporal_residual = self.temporal_dense(
            temporal_residual.reshape(batch_size, patches_h * patches_w * num_frames, hidden_size)
        )
        temporal = hidden_states[:, 1:, :] + temporal_residual

        # Spatial attention within each frame, with the CLS token replicated per frame.
        init_cls_token = hidden_states[:, :1, :]
        cls_token = init_cls_token.repeat(1, num_frames, 1).reshape(batch_size * num_frames, 1, hidden_size)
        spatial = (
            temporal.reshape(batch_size, patches_h, patches_w, num_frames, hidden_size)
            .permute(0, 3, 1, 2, 4)
            .reshape(batch_size * num_frames, patches_h * patches_w, hidden_size)
        )
        spatial = torch.cat((cls_token, spatial), 1)
        attention_outputs = self.attention(self.layernorm_before(spatial), output_attentions=output_attentions)
        spatial_residual = self.drop_path(attention_outputs[0])

        cls_residual = spatial_residual[:, 0, :].reshape(batch_size, num_frames, hidden_size).mean(1, keepdim=True)
        patch_residual = (
            spatial_residual[:, 1:, :]
            .reshape(batch_size, num_frames, patches_h, patches_w, hidden_size)
            .permute(0, 2, 3, 1, 4)
            .reshape(batch_size, patches_h * patches_w * num_frames, hidden_size)
        )
        hidden_states = torch.cat((init_cls_token, temporal), 1) + torch.cat((cls_residual, patch_residual), 1)
        return hidden_states, attention_outputs[1] if output_attentions else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        unit_index: torch.Tensor | None = None,
        output_attentions: bool = False,
        shared_routing: RoutingDecision | None = None,
    ):
        hidden_states, attention_probs = self.attention_block(hidden_states, output_attentions)
        layer_input = self.layernorm_after(hidden_states)
        if self.is_moe:
            mlp_output, routing = self.mlp(layer_input, unit_index, shared_routing)
            mlp_output = self.mlp_dropout(mlp_output)
        else:
            mlp_output, routing = self.output(self.intermediate(layer_input)), None
        return hidden_states + self.drop_path(mlp_output), routing, attention_probs


class TimesformerMoeEncoder(nn.Module):
    def __init__(self, config: TimesformerMoeConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                TimesformerMoeLayer(config, i, is_moe=i in config.moe_layers, owns_router=owns_router(config, i))
                for i in range(config.num_hidden_layers)
            ]
        )


class TimesformerMoePreTrainedModel(MoePreTrainedModelMixin, TimesformerPreTrainedModel):
    config_class = TimesformerMoeConfig
    config: TimesformerMoeConfig
    input_modalities = ("video",)
    _no_split_modules = ["TimesformerMoeLayer"]
    # See VideoMAEMoePreTrainedModel: the experts decorator lives in hf_videomoe.moe.
    _can_set_experts_implementation_cached_value = True

    def _init_weights(self, module):
        super()._init_weights(module)
        init_moe_weights(module, self.config.initializer_range)
        if isinstance(module, TimesformerEmbeddings):
            # transformers leaves the time embeddings at zero (the original fine-tunes an image ViT). With divided
            # attention and equal time embeddings the output does not change when the frames are permuted, so a model
            # built from a config would start blind to frame order, and from scratch at small scale it stays so
            # (docs/PROTOCOL.md, "Schedule", step 5). Initialised like the position embeddings instead; upcycled and
            # pretrained weights overwrite this.
            init.trunc_normal_(module.time_embeddings, std=self.config.initializer_range)


class TimesformerMoeModel(MoeVideoEncoderMixin, TimesformerMoePreTrainedModel):
    """The TimeSformer-MoE encoder. Takes ``pixel_values`` in [0, 1], ``(batch, frames, channels, height, width)``.

    Unlike transformers' TimeSformer, a clip whose frame count differs from ``config.num_frames`` is rejected with a
    `ValueError` instead of being silently reshaped.
    """

    def __init__(self, config: TimesformerMoeConfig):
        super().__init__(config)
        self.embeddings = TimesformerEmbeddings(config)
        self.encoder = TimesformerMoeEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values)

    def unit_index(self, device) -> torch.Tensor | None:
        return routing_units(self.config, device)

    @staticmethod
    def call_layer(layer, hidden_states, unit_index, output_attentions, shared_routing):
        return layer(hidden_states, unit_index, output_attentions, shared_routing)


class TimesformerMoeForVideoClassification(MoeVideoClassifierMixin, MoeUpcyclingMixin, TimesformerMoePreTrainedModel):
    """TimeSformer-MoE with TimeSformer's classification head on the CLS token.

    ``loss`` is the cross-entropy plus ``aux_loss`` when ``labels`` are given.
    """

    # `forward` takes **kwargs (so Trainer's `num_items_in_batch` is accepted and ignored); without this flag Trainer
    # would assume the loss is already normalised by item count and skip its gradient-accumulation scaling.
    accepts_loss_kwargs = False
    dense_model_class = TimesformerForVideoClassification
    dense_layers_attribute = "timesformer.encoder.layer"

    def __init__(self, config: TimesformerMoeConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.timesformer = TimesformerMoeModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return sequence_output[:, 0]


__all__ = ["TimesformerMoeForVideoClassification", "TimesformerMoeModel", "TimesformerMoePreTrainedModel"]
