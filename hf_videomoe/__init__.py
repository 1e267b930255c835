"""hf_videomoe: robust Mixture-of-Experts video transformers for the Hugging Face ecosystem.

Importing the package registers ``videomae_moe`` and ``timesformer_moe`` with transformers' ``AutoConfig``,
``AutoModel`` and ``AutoModelForVideoClassification``, so checkpoints saved by this library load with the Auto
classes and never need ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

from .models.timesformer_moe import (
    TimesformerMoeConfig,
    TimesformerMoeForVideoClassification,
    TimesformerMoeModel,
)
from .models.videomae_moe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification, VideoMAEMoeModel

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

__all__ = [
    "TimesformerMoeConfig",
    "TimesformerMoeForVideoClassification",
    "TimesformerMoeModel",
    "VideoMAEMoeConfig",
    "VideoMAEMoeForVideoClassification",
    "VideoMAEMoeModel",
    "__version__",
]
