"""Hub integration: robustness model cards (``model-index`` metrics) and pushing robust checkpoints.

``hf_videomoe.testing`` holds a Hub-compatible loopback server for offline tests.
"""

from .card_metrics import metrics_from_model_card, report_metrics
from .model_card import CARD_TAGS, ModelCardOptions, RobustnessModelCard, build_model_card
from .push import HubUploadError, prepare_robust_checkpoint, push_robust_checkpoint

__all__ = [
    "CARD_TAGS",
    "HubUploadError",
    "ModelCardOptions",
    "RobustnessModelCard",
    "build_model_card",
    "metrics_from_model_card",
    "prepare_robust_checkpoint",
    "push_robust_checkpoint",
    "report_metrics",
]
