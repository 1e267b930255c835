from .configuration_videomae_moe import VideoMAEMoeConfig
from .modeling_videomae_moe import VideoMAEMoeForVideoClassification, VideoMAEMoeModel, VideoMAEMoePreTrainedModel

__all__ = ["VideoMAEMoeConfig", "VideoMAEMoeForVideoClassification", "VideoMAEMoeModel", "VideoMAEMoePreTrainedModel"]
