"""Every adversarial-training method by its ``adv_method`` name, and the lookup the trainers build theirs with."""

from __future__ import annotations

from .advmoe import AdvMoE
from .method import TrainingMethod
from .pgd_at import PGDAT, CleanTraining
from .tlat import JTLAT, TLAT
from .trades import TRADES

__all__ = ["METHODS", "build_method", "methods_trained_by"]

METHODS: dict[str, type[TrainingMethod]] = {
    cls.name: cls for cls in (CleanTraining, PGDAT, TRADES, AdvMoE, TLAT, JTLAT)
}


def build_method(adv_method: str) -> TrainingMethod:
    """The [`TrainingMethod`] registered as ``adv_method``; `ValueError` for a name no method has."""
    if adv_method not in METHODS:
        raise ValueError(f"Unknown adv_method {adv_method!r}; choose one of {list(METHODS)}.")
    return METHODS[adv_method]()


def methods_trained_by(trainer_name: str) -> tuple[str, ...]:
    """The ``adv_method`` names whose method the trainer class ``trainer_name`` runs."""
    return tuple(name for name, method in METHODS.items() if method.trainer_name == trainer_name)
