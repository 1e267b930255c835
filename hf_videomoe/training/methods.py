"""Every adversarial-training method by its ``adv_method`` name."""

from __future__ import annotations

from .advmoe import AdvMoE
from .method import TrainingMethod
from .pgd_at import PGDAT, CleanTraining
from .tlat import JTLAT, TLAT
from .trades import TRADES

__all__ = ["METHODS"]

METHODS: dict[str, type[TrainingMethod]] = {
    cls.name: cls for cls in (CleanTraining, PGDAT, TRADES, AdvMoE, TLAT, JTLAT)
}
