from .configuration_timesformer_moe import TimesformerMoeConfig
from .modeling_timesformer_moe import (
    TimesformerMoeForVideoClassification,
    TimesformerMoeModel,
    TimesformerMoePreTrainedModel,
)

__all__ = [
    "TimesformerMoeConfig",
    "TimesformerMoeForVideoClassification",
    "TimesformerMoeModel",
    "TimesformerMoePreTrainedModel",
]
