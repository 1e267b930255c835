"""Pieces shared by the two MoE video models: input checks, pixel normalisation, outputs, processors, weight init."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

try:
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - safetensors is a transformers dependency
    SafetensorError = OSError

from ..moe import MoeExperts, MoeRouter, compute_aux_loss
from .processing import consistent_image_processor, frame_size, load_local_image_processor, save_processors

# ImageNet statistics, the convention of VideoMAE checkpoints (TimeSformer's use 0.45 / 0.225; see its config).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Pixel values produced by bilinear resizing or codecs can overshoot [0, 1] by a hair; anything beyond this is a
# caller passing normalised or 0-255 pixels.
_PIXEL_RANGE_TOLERANCE = 1e-3


@dataclass
class MoeVideoModelOutput(ModelOutput):
    """Output of the MoE video backbones.

    Args:
        last_hidden_state: ``(batch, seq_len, hidden_size)``.
        router_logits: one float32 tensor ``(batch, num_units, num_experts)`` per MoE layer, in layer order.
        hidden_states: embeddings output plus every layer's output, when ``output_hidden_states=True``.
        attentions: attention probabilities per layer, when ``output_attentions=True`` (needs eager attention).
    """

    last_hidden_state: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MoeVideoClassifierOutput(ModelOutput):
    """Output of the MoE video classifiers.

    Args:
        loss: cross-entropy plus ``aux_loss`` (when ``labels`` are given).
        logits: ``(batch, num_labels)``.
        aux_loss: the weighted load-balancing + z-loss (already multiplied by its coefficients).
        router_logits: one ``(batch, num_units, num_experts)`` float32 tensor per MoE layer.
        hidden_states, attentions: as in transformers' classifiers.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def looks_like_local_path(path: str) -> bool:
    """Whether ``path`` can only be a filesystem path (a Hub id is ``name`` or ``namespace/name``)."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path


class MoePreTrainedModelMixin:
    """Behaviour shared by the MoE ``PreTrainedModel``s (listed before the transformers base class).

    * ``from_pretrained`` turns missing / corrupt local checkpoints into one clear `OSError`: transformers reports a
      missing local directory as an invalid Hub repo id, a directory without ``config.json`` as a size-mismatch
      report against a default config, and a truncated ``model.safetensors`` as a bare ``SafetensorError`` from deep
      inside the loader. Auto classes dispatch to this method too.
    * The default experts kernel is ``"eager"`` on machines without CUDA (it is the fastest on CPU, see
      docs/bench_moe.md) and transformers' ``"grouped_mm"`` otherwise. An explicit ``experts_implementation=`` or
      ``set_experts_implementation(...)`` always wins.
    """

    supports_gradient_checkpointing = True
    #: the processor written with every checkpoint (see `pixel_image_processor`); set by `from_dense` and
    #: `from_pretrained` from the checkpoint's own, else built from the config when saving.
    image_processor = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the video and image processors of `save_processors`, consistent with
        the model's pixel convention (frames in [0, 1], not normalised) and with `hf_videomoe.data.read_video`, so that
        ``AutoVideoProcessor``, ``AutoImageProcessor`` and ``pipeline("video-classification", model=save_directory)``
        work on every checkpoint we write (Trainer checkpoints and `push_robust_checkpoint` included)."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_kwargs = {
            key: kwargs.pop(key)
            for key in ("repo_id", "commit_message", "private", "token", "create_pr")
            if key in kwargs
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            save_processors(save_directory, self.config, self.image_processor)
        if push_to_hub:
            # transformers uploads the files that changed during its own save_pretrained, before the processor exists;
            # push_to_hub saves again in a temporary folder (processor included) and uploads that.
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            self.push_to_hub(repo_id, **hub_kwargs)

    def _set_gradient_checkpointing(self, enable: bool = True, **kwargs):
        # Our layers hand a routing decision (a dataclass of tensors) from layer to layer; reentrant checkpointing
        # only tracks tensors passed positionally, so the router would silently lose its gradient.
        keywords = getattr(kwargs.get("gradient_checkpointing_func"), "keywords", None) or {}
        if enable and keywords.get("use_reentrant"):
            raise ValueError(
                f"{type(self).__name__} supports only non-reentrant activation checkpointing: pass "
                "`gradient_checkpointing_kwargs={'use_reentrant': False}` (the default)."
            )
        return super()._set_gradient_checkpointing(enable=enable, **kwargs)

    def get_correct_experts_implementation(self, requested_experts: str | None) -> str:
        if requested_experts is None and not torch.cuda.is_available():
            requested_experts = "eager"
        return super().get_correct_experts_implementation(requested_experts)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        path = (
            os.fspath(pretrained_model_name_or_path)
            if isinstance(pretrained_model_name_or_path, (str, os.PathLike))
            else None
        )
        if path is not None:
            if looks_like_local_path(path) and not os.path.exists(os.path.expanduser(path)):
                raise OSError(f"Could not load {cls.__name__} from {path}: no such file or directory.")
            if (
                os.path.isdir(path)
                and kwargs.get("config") is None
                and not os.path.isfile(os.path.join(path, "config.json"))
            ):
                raise OSError(
                    f"Could not load {cls.__name__} from {path}: the directory has no config.json (save checkpoints "
                    "with `model.save_pretrained(path)`)."
                )
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except (SafetensorError, pickle.UnpicklingError, EOFError) as err:
            raise OSError(
                f"Could not load {cls.__name__} from {path}: the checkpoint looks corrupt ({type(err).__name__}: {err})."
            ) from err
        if path is not None:
            model.image_processor = consistent_image_processor(model.config, load_local_image_processor(path))
        return model


class MoeVideoEncoderMixin:
    """The forward pass both MoE encoders share (listed before the ``PreTrainedModel`` base).

    The encoder has ``embeddings`` (with ``patch_embeddings``), ``encoder.layer`` and ``layernorm`` (or ``None``), and
    defines ``embed(normalized_pixels)``, ``unit_index(device)`` (token -> routing unit map, or ``None``) and
    ``call_layer(layer, hidden_states, unit_index, output_attentions, shared_routing)`` returning ``(hidden_states,
    routing, attention_probs)``. With ``router_granularity="model"`` the decision of the router-owning layer is handed
    to every later layer.
    """

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MoeVideoModelOutput:
        config = self.config
        validate_pixel_values(pixel_values, config, type(self).__name__)
        output_router_logits = config.output_router_logits if output_router_logits is None else output_router_logits
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions

        dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        hidden_states = self.embed(normalize_pixel_values(pixel_values, config, dtype))
        unit_index = self.unit_index(hidden_states.device)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        all_router_logits = []
        shared_routing = None
        for layer in self.encoder.layer:
            hidden_states, routing, attention_probs = self.call_layer(
                layer, hidden_states, unit_index, output_attentions, shared_routing
            )
            if routing is not None:
                all_router_logits.append(routing.router_logits)
                if config.router_granularity == "model":
                    shared_routing = routing
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if output_attentions:
                all_attentions.append(attention_probs)
        if self.layernorm is not None:
            hidden_states = self.layernorm(hidden_states)
        return MoeVideoModelOutput(
            last_hidden_state=hidden_states,
            router_logits=tuple(all_router_logits) if output_router_logits else None,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


class MoeVideoClassifierMixin:
    """The classifier forward pass both MoE models share: the encoder (``base_model``), ``pool(sequence_output)``
    (defined by each model, as in its transformers twin), the linear ``classifier``, and ``loss`` = cross-entropy +
    ``aux_loss`` when ``labels`` are given."""

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MoeVideoClassifierOutput:
        output_router_logits = (
            self.config.output_router_logits if output_router_logits is None else output_router_logits
        )
        outputs = self.base_model(
            pixel_values,
            output_router_logits=True,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        logits = self.classifier(self.pool(outputs.last_hidden_state))
        return classifier_output(logits, labels, outputs, self.config, output_router_logits)


def classifier_output(logits, labels, backbone_outputs, config, output_router_logits: bool) -> MoeVideoClassifierOutput:
    """Cross-entropy + weighted aux loss and the output object, shared by both MoE classifiers."""
    aux_loss = compute_aux_loss(backbone_outputs.router_logits, config) if output_router_logits else None
    loss = None
    if labels is not None:
        validate_labels(labels, logits.shape[0], config.num_labels)
        loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long())
        if aux_loss is not None:
            loss = loss + aux_loss.to(loss.device)
    return MoeVideoClassifierOutput(
        loss=loss,
        logits=logits,
        aux_loss=aux_loss,
        router_logits=backbone_outputs.router_logits if output_router_logits else None,
        hidden_states=backbone_outputs.hidden_states,
        attentions=backbone_outputs.attentions,
    )


def validate_labels(labels, batch_size: int, num_labels: int) -> None:
    """Raise a `TypeError` / `ValueError` naming what was expected unless ``labels`` are ``batch_size`` integer class
    indices in ``[0, num_labels)`` (cross-entropy would otherwise truncate float labels, or fail deep in torch)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor of {batch_size} class indices, got {type(labels).__name__}.")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(
            f"`labels` must be integer class indices in [0, {num_labels}) with shape ({batch_size},), got dtype "
            f"{labels.dtype}"
            + (
                " of shape " + str(tuple(labels.shape)) + " (one-hot? pass `labels.argmax(-1)`)"
                if labels.ndim == 2
                else ""
            )
            + "."
        )
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(
            f"`labels` must have shape ({batch_size},), one class index per clip, got {tuple(labels.shape)}."
        )
    if labels.numel() and not torch.compiler.is_compiling():
        low, high = (int(value) for value in labels.aminmax())
        if low < 0 or high >= num_labels:
            raise ValueError(
                f"`labels` must be class indices in [0, {num_labels}) (config.num_labels={num_labels}), got values in "
                f"[{low}, {high}]."
            )


def validate_pixel_values(pixel_values, config, model_name: str) -> None:
    """Raise a `ValueError`/`TypeError` naming the expected layout for anything the model cannot consume as is."""
    size = frame_size(config)
    expected = f"(batch, {config.num_frames}, {config.num_channels}, {size}, {size})"
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{model_name} expects `pixel_values` as a torch.Tensor {expected}, got {type(pixel_values)}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"{model_name} expects float `pixel_values` in [0, 1] with shape {expected}, got dtype {pixel_values.dtype}"
            " (divide uint8 frames by 255)."
        )
    if pixel_values.ndim != 5:
        raise ValueError(
            f"{model_name} expects `pixel_values` of rank 5 {expected} = (batch, frames, channels, height, width), "
            f"got shape {tuple(pixel_values.shape)}."
        )
    _, frames, channels, height, width = pixel_values.shape
    if (frames, channels, height, width) != (config.num_frames, config.num_channels, size, size):
        raise ValueError(
            f"{model_name} expects `pixel_values` of shape {expected}, got {tuple(pixel_values.shape)}. Sample or "
            "resize the clip to the model's `num_frames` and `image_size`; channels go before height and width."
        )
    if pixel_values.shape[0] == 0:
        raise ValueError(f"{model_name} got an empty batch: `pixel_values` of shape {tuple(pixel_values.shape)}.")
    if not torch.compiler.is_compiling():
        low, high = pixel_values.detach().aminmax()
        if not (torch.isfinite(low) and torch.isfinite(high)):  # min / max propagate NaN: one bad pixel is enough
            raise ValueError(
                f"{model_name} expects finite `pixel_values` in [0, 1] with shape {expected}, got NaN or infinite "
                f"values ({int((~torch.isfinite(pixel_values)).sum())} of {pixel_values.numel()})."
            )
        if low < -_PIXEL_RANGE_TOLERANCE or high > 1 + _PIXEL_RANGE_TOLERANCE:
            raise ValueError(
                f"{model_name} expects raw `pixel_values` in [0, 1] with shape {expected} (it normalises with "
                f"`config.image_mean`/`image_std` itself), got values in [{float(low):.3f}, {float(high):.3f}]."
            )


def normalize_pixel_values(pixel_values: torch.Tensor, config, dtype: torch.dtype) -> torch.Tensor:
    """``(x - image_mean) / image_std`` per channel, cast to the model's dtype."""
    shape = (1, 1, -1, 1, 1)
    mean = torch.tensor(config.image_mean, device=pixel_values.device, dtype=pixel_values.dtype).view(shape)
    std = torch.tensor(config.image_std, device=pixel_values.device, dtype=pixel_values.dtype).view(shape)
    return ((pixel_values - mean) / std).to(dtype)


def init_moe_weights(module: nn.Module, std: float) -> None:
    """`_init_weights` branch for the MoE parameters, which transformers' generic init does not know."""
    if isinstance(module, MoeExperts):
        init.normal_(module.up_proj, mean=0.0, std=std)
        init.normal_(module.down_proj, mean=0.0, std=std)
        init.zeros_(module.up_proj_bias)
        init.zeros_(module.down_proj_bias)
    elif isinstance(module, MoeRouter):
        init.normal_(module.weight, mean=0.0, std=std)
