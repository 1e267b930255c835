"""VideoMAE with sparse Mixture-of-Experts MLPs.

Module names follow `transformers.models.videomae` (``videomae.embeddings``, ``videomae.encoder.layer.N.attention``,
``fc_norm``, ``classifier``, ...) so that dense VideoMAE weights load onto every shared part; an MoE layer replaces
``intermediate`` + ``output`` with ``mlp`` (router + stacked experts).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import VideoMAEForVideoClassification
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.videomae.modeling_videomae import (
    VideoMAEAttention,
    VideoMAEEmbeddings,
    VideoMAEIntermediate,
    VideoMAEOutput,
    VideoMAEPreTrainedModel,
)

from ...moe import RoutingDecision, SparseMoeBlock, owns_router
from ..common import MoePreTrainedModelMixin, MoeVideoClassifierMixin, MoeVideoEncoderMixin, init_moe_weights
from ..upcycling import MoeUpcyclingMixin
from .configuration_videomae_moe import VideoMAEMoeConfig


def routing_units(config: VideoMAEMoeConfig, device=None) -> torch.Tensor | None:
    """Token -> routing-unit map for VideoMAE's token order (tubelet time, patch row, patch column).

    ``None`` means every token is its own unit (token routing).
    """
    patches_per_frame = (config.image_size // config.patch_size) ** 2
    num_tokens = (config.num_frames // config.tubelet_size) * patches_per_frame
    if config.router_granularity == "token":
        return None
    if config.router_granularity == "frame":
        return torch.arange(num_tokens, device=device) // patches_per_frame
    return torch.zeros(num_tokens, dtype=torch.long, device=device)  # "clip" and "model": one unit per clip


class VideoMAEMoeLayer(GradientCheckpointingLayer):
    """A VideoMAE block whose MLP is either the stock dense one or a [`SparseMoeBlock`] (``is_moe``)."""

    def __init__(self, config: VideoMAEMoeConfig, is_moe: bool, owns_router: bool = True):
        super().__init__()
        self.is_moe = is_moe
        self.attention = VideoMAEAttention(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if is_moe:
            self.mlp = SparseMoeBlock(config, owns_router=owns_router)
            self.mlp_dropout = nn.Dropout(config.hidden_dropout_prob)
        else:
            self.intermediate = VideoMAEIntermediate(config)
            self.output = VideoMAEOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        unit_index: torch.Tensor | None = None,
        shared_routing: RoutingDecision | None = None,
    ):
        hidden_states_norm = self.layernorm_before(hidden_states)
        context, attention_probs = self.attention.attention(hidden_states_norm)
        hidden_states = self.attention.output(context, hidden_states_norm) + hidden_states

        layer_input = self.layernorm_after(hidden_states)
        if self.is_moe:
            mlp_output, routing = self.mlp(layer_input, unit_index, shared_routing)
            layer_output = self.mlp_dropout(mlp_output) + hidden_states
        else:
            layer_output = self.output(self.intermediate(layer_input), hidden_states)
            routing = None
        return layer_output, routing, attention_probs


class VideoMAEMoeEncoder(nn.Module):
    def __init__(self, config: VideoMAEMoeConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                VideoMAEMoeLayer(config, is_moe=i in config.moe_layers, owns_router=owns_router(config, i))
                for i in range(config.num_hidden_layers)
            ]
        )


class VideoMAEMoePreTrainedModel(MoePreTrainedModelMixin, VideoMAEPreTrainedModel):
    config_class = VideoMAEMoeConfig
    config: VideoMAEMoeConfig
    _no_split_modules = ["VideoMAEEmbeddings", "VideoMAEMoeLayer"]
    _supports_flash_attn = False
    _supports_flex_attn = False
    # transformers decides whether `experts_implementation=` may be set by grepping the modeling file for the
    # `@use_experts_implementation` decorator; ours lives in hf_videomoe.moe, so declare it.
    _can_set_experts_implementation_cached_value = True
    _can_record_outputs = {}

    def _init_weights(self, module):
        super()._init_weights(module)
        init_moe_weights(module, self.config.initializer_range)


class VideoMAEMoeModel(MoeVideoEncoderMixin, VideoMAEMoePreTrainedModel):
    """The VideoMAE-MoE encoder. Takes ``pixel_values`` in [0, 1], ``(batch, frames, channels, height, width)``."""

    def __init__(self, config: VideoMAEMoeConfig):
        super().__init__(config)
        self.embeddings = VideoMAEEmbeddings(config)
        self.encoder = VideoMAEMoeEncoder(config)
        self.layernorm = (
            None if config.use_mean_pooling else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        )
        self.post_init()

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values, None)

    def unit_index(self, device) -> torch.Tensor | None:
        return routing_units(self.config, device)

    @staticmethod
    def call_layer(layer, hidden_states, unit_index, output_attentions, shared_routing):
        return layer(hidden_states, unit_index, shared_routing)


class VideoMAEMoeForVideoClassification(MoeVideoClassifierMixin, MoeUpcyclingMixin, VideoMAEMoePreTrainedModel):
    """VideoMAE-MoE with VideoMAE's classification head (mean pooling + ``fc_norm``, or the first token).

    ``loss`` is the cross-entropy plus ``aux_loss`` (load-balancing and z-loss, already weighted by their config
    coefficients) when ``labels`` are given.
    """

    # `forward` takes **kwargs (so Trainer's `num_items_in_batch` is accepted and ignored); without this flag Trainer
    # would assume the loss is already normalised by item count and skip its gradient-accumulation scaling.
    accepts_loss_kwargs = False
    dense_model_class = VideoMAEForVideoClassification
    dense_layers_attribute = "videomae.encoder.layer"

    def __init__(self, config: VideoMAEMoeConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.videomae = VideoMAEMoeModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size) if config.use_mean_pooling else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        if self.fc_norm is not None:
            return self.fc_norm(sequence_output.mean(1))
        return sequence_output[:, 0]


__all__ = ["VideoMAEMoeForVideoClassification", "VideoMAEMoeModel", "VideoMAEMoePreTrainedModel"]
