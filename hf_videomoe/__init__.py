"""hf_videomoe: robust Mixture-of-Experts video transformers for the Hugging Face ecosystem.

Importing the package registers ``videomae_moe`` and ``timesformer_moe`` with transformers' ``AutoConfig``,
``AutoModel`` and ``AutoModelForVideoClassification``, so checkpoints saved by this library load with the Auto
classes and never need ``trust_remote_code``.
"""

# HF_VIDEOMOE_REPRODUCIBLE=1 must pin torch's, MKL's and numpy's code paths before they load (hf_videomoe.reproducibility).
from .reproducibility import apply_environment_switch, apply_torch_pins

apply_environment_switch()

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification  # noqa: E402

from .models.timesformer_moe import (  # noqa: E402
    TimesformerMoeConfig,
    TimesformerMoeForVideoClassification,
    TimesformerMoeModel,
)
from .models.videomae_moe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification, VideoMAEMoeModel  # noqa: E402

apply_torch_pins()

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    for config_cls, model_cls, classifier_cls in (
        (VideoMAEMoeConfig, VideoMAEMoeModel, VideoMAEMoeForVideoClassification),
        (TimesformerMoeConfig, TimesformerMoeModel, TimesformerMoeForVideoClassification),
    ):
        # exist_ok: re-importing (e.g. importlib.reload in notebooks) must not fail.
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        AutoModelForVideoClassification.register(config_cls, classifier_cls, exist_ok=True)


_register_auto_classes()


def __getattr__(name: str):
    # The evaluation stack (attacks, data sources, the evaluator) loads on first use, not with the models.
    if name == "RobustnessArguments":
        from .evaluation import RobustnessArguments

        return RobustnessArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RobustnessArguments",
    "TimesformerMoeConfig",
    "TimesformerMoeForVideoClassification",
    "TimesformerMoeModel",
    "VideoMAEMoeConfig",
    "VideoMAEMoeForVideoClassification",
    "VideoMAEMoeModel",
    "__version__",
]
