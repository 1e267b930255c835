"""Dense -> MoE upcycling of a whole transformers video classifier (``from_dense``)."""

from __future__ import annotations

import json
import os

from transformers import PreTrainedModel
from transformers.utils import logging

from ..moe import check_expert_init, diversify_experts, moe_blocks, upcycle_mlp
from .common import looks_like_local_path
from .processing import load_local_image_processor, pixel_image_processor

logger = logging.get_logger(__name__)

__all__ = ["MoeUpcyclingMixin", "upcycle_from_dense"]


def upcycle_from_dense(
    moe_cls: type[PreTrainedModel],
    dense_cls: type[PreTrainedModel],
    dense_model_or_path,
    moe_config_kwargs: dict,
    layers_attribute: str,
    expert_init: str = "copy",
    expert_init_ratio: float = 0.5,
    expert_init_seed: int = 0,
    image_processor=None,
) -> PreTrainedModel:
    """Build ``moe_cls`` from a dense classifier, copying every shared weight and each MLP into its layer's experts.

    Args:
        moe_cls: the MoE classifier class.
        dense_cls: the matching transformers classifier class, used to load a local path.
        dense_model_or_path: a dense model instance or a local directory / Hub id loadable by ``dense_cls``.
        moe_config_kwargs: the MoE fields (``num_experts``, ``moe_layers``, ...); ``None`` values are dropped.
        layers_attribute: dotted path from the classifier to its ``nn.ModuleList`` of layers.
        expert_init, expert_init_ratio, expert_init_seed: how the copied experts are made to differ (see
            [`~hf_videomoe.moe.diversify_experts`]); ``"copy"`` keeps the upcycling exact.
        image_processor: the dense model's image processor (default: the one saved beside a local dense checkpoint).
            Its resize / crop settings are kept in the processor saved with the MoE, and, when it normalises, its
            mean / std become the MoE config's ``image_mean`` / ``image_std`` unless those are given.
    """
    check_expert_init(expert_init, expert_init_ratio)  # before loading the dense model
    if isinstance(dense_model_or_path, (str, os.PathLike)):
        path = os.fspath(dense_model_or_path)
        if looks_like_local_path(path) and not os.path.exists(os.path.expanduser(path)):
            raise OSError(f"from_dense: no dense checkpoint at {path} (no such file or directory).")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a model directory: it has no config.json.")
        if os.path.isdir(path):
            # Reject a checkpoint of another architecture before transformers loads it (noisily) into the wrong class.
            try:
                with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
                    saved_type = json.load(f).get("model_type")
            except (OSError, ValueError, AttributeError):
                saved_type = None
            expected_type = dense_cls.config_class.model_type
            if saved_type is not None and saved_type != expected_type:
                raise ValueError(
                    f"from_dense for {moe_cls.__name__} needs a `{expected_type}` checkpoint, but {path} holds a "
                    f"`{saved_type}` model."
                )
        dense = dense_cls.from_pretrained(path)
        if image_processor is None:
            image_processor = load_local_image_processor(path)
    elif isinstance(dense_model_or_path, PreTrainedModel):
        dense = dense_model_or_path
    else:
        raise TypeError(
            f"from_dense expects a {dense_cls.__name__} or a path to one, got {type(dense_model_or_path).__name__}."
        )
    if moe_blocks(dense):
        raise ValueError(f"{type(dense).__name__} already has MoE blocks; from_dense expects a dense model.")
    expected_type = dense_cls.config_class.model_type
    if dense.config.model_type != expected_type:
        raise ValueError(
            f"from_dense for {moe_cls.__name__} needs a `{expected_type}` model, got `{dense.config.model_type}`."
        )

    config_dict = dense.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        config_dict.pop(key, None)
    if moe_config_kwargs.get("id2label") is not None or moe_config_kwargs.get("num_labels") is not None:
        for key in ("id2label", "label2id", "num_labels"):  # the new label set replaces the dense model's
            config_dict.pop(key, None)
    head: set[str] = set()
    if image_processor is not None:
        # The MoE applies inside forward the normalisation the dense model saw: its processor's statistics, or none.
        num_channels = dense.config.num_channels
        normalizes = getattr(image_processor, "do_normalize", False)
        for key, identity in (("image_mean", 0.0), ("image_std", 1.0)):
            if moe_config_kwargs.get(key) is None:
                values = getattr(image_processor, key, None) if normalizes else [identity] * num_channels
                if values is not None:
                    values = [float(v) for v in ([values] if isinstance(values, (int, float)) else values)]
                    moe_config_kwargs = {
                        **moe_config_kwargs,
                        key: values * num_channels if len(values) == 1 else values,
                    }
    config_dict.update({k: v for k, v in moe_config_kwargs.items() if v is not None})
    moe = moe_cls(moe_cls.config_class(**config_dict))
    moe.to(dtype=next(dense.parameters()).dtype)

    dense_state = dense.state_dict()
    if moe.config.num_labels != dense.config.num_labels:
        # Fine-tuning on another label set (a Kinetics-400 checkpoint on UCF-101): a fresh classification head.
        logger.warning(
            f"from_dense: the dense model has {dense.config.num_labels} labels and the MoE "
            f"{moe.config.num_labels}: the classifier head is initialised anew."
        )
        head = {
            name
            for name, value in moe.state_dict().items()
            if name in dense_state and value.shape != dense_state[name].shape and name.startswith("classifier.")
        }
        dense_state = {name: value for name, value in dense_state.items() if name not in head}
    missing, unexpected = moe.load_state_dict(dense_state, strict=False)
    # Only the MLPs of MoE layers may differ: they are copied into the experts below, routers keep their init.
    moe_layer_prefixes = tuple(f"{layers_attribute}.{i}." for i in moe.config.moe_layers)
    stray = [k for k in missing if not (k.startswith(moe_layer_prefixes) and (".mlp." in k)) and k not in head]
    stray += [
        k
        for k in unexpected
        if not (k.startswith(moe_layer_prefixes) and (".intermediate." in k or ".output.dense" in k))
    ]
    if stray:
        raise ValueError(f"Dense checkpoint does not map onto {moe_cls.__name__}: mismatched weights {stray[:8]}.")

    dense_layers = dense.get_submodule(layers_attribute)
    moe_layers = moe.get_submodule(layers_attribute)
    for index in moe.config.moe_layers:
        upcycle_mlp(moe_layers[index].mlp, dense_layers[index].intermediate.dense, dense_layers[index].output.dense)
        diversify_experts(moe_layers[index].mlp, expert_init, expert_init_ratio, seed=expert_init_seed + index)
    moe.train(dense.training)
    if image_processor is not None:
        moe.image_processor = pixel_image_processor(moe.config, template=image_processor)
    return moe


class MoeUpcyclingMixin:
    """`from_dense` for the MoE classifiers (listed before the ``PreTrainedModel`` base). A class sets
    ``dense_model_class`` (the transformers classifier it upcycles) and ``dense_layers_attribute`` (the dotted path to
    its layers)."""

    dense_model_class: type[PreTrainedModel]
    dense_layers_attribute: str

    @classmethod
    def from_dense(
        cls,
        dense_model_or_path,
        num_experts: int = 4,
        num_experts_per_tok: int = 1,
        moe_layers: list[int] | None = None,
        router_granularity: str = "token",
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        expert_init: str = "copy",
        expert_init_ratio: float = 0.5,
        expert_init_seed: int = 0,
        image_processor=None,
        **config_kwargs,
    ):
        """Upcycle the dense transformers classifier of this architecture (``dense_model_class``: an instance, a local
        directory or a Hub id).

        Every expert starts as a copy of its layer's dense MLP, so at initialisation the MoE model's logits on pixels
        ``x`` in [0, 1] equal the dense model's logits on ``(x - image_mean) / image_std``. ``image_mean`` /
        ``image_std`` default to the config's (ImageNet statistics for VideoMAE, 0.45 / 0.225 for TimeSformer); pass
        the dense checkpoint's processor statistics if they differ. Extra keyword arguments set other MoE config
        fields (e.g. ``router_aux_loss_coef``, ``router_gate``).

        ``expert_init`` makes the copies differ so that routing has something to choose between:
        ``"drop_upcycling"`` re-initialises a different random ``expert_init_ratio`` of each expert's neurons
        (Drop-Upcycling), ``"noise"`` adds relative Gaussian noise of that scale; both give up the exact equality
        above (``"copy"``, the default, keeps it). See [`~hf_videomoe.moe.diversify_experts`], and
        [`~hf_videomoe.moe.cluster_routers`] to start the routers from clusters of their inputs.

        The dense checkpoint's image processor (saved beside a local checkpoint, or ``image_processor=``) carries over:
        its resize / crop settings into the processor saved with the MoE (which rescales to [0, 1] and does not
        normalise), and its mean / std, when it normalises, into ``image_mean`` / ``image_std`` unless given.
        """
        return upcycle_from_dense(
            cls,
            cls.dense_model_class,
            dense_model_or_path,
            dict(
                num_experts=num_experts,
                num_experts_per_tok=num_experts_per_tok,
                moe_layers=moe_layers,
                router_granularity=router_granularity,
                image_mean=image_mean,
                image_std=image_std,
                **config_kwargs,
            ),
            expert_init=expert_init,
            expert_init_ratio=expert_init_ratio,
            expert_init_seed=expert_init_seed,
            image_processor=image_processor,
            layers_attribute=cls.dense_layers_attribute,
        )
