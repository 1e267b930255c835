"""Validation clips carved from a training split, so that choices are never made on test clips."""

from __future__ import annotations

VALIDATION_FRACTION = 0.2


def hold_out_validation(train, fraction: float = VALIDATION_FRACTION) -> tuple:
    """Split a training `datasets.Dataset` into ``(train, validation)``: the first ``1 - fraction`` of its clips and
    the last ``fraction`` (``len(train) * fraction`` rounded down), in their order.

    The same carve-out as the validation rounds of ``scripts/routing_relevance.py`` and the reproduction's validation
    mode (``scripts/reproduce_paper.py --validation``): the test split is not touched."""
    if not 0 < fraction < 1:
        raise ValueError(f"hold_out_validation takes a fraction in (0, 1), got {fraction}.")
    num_validation = int(len(train) * fraction)
    if num_validation == 0 or num_validation == len(train):
        raise ValueError(
            f"hold_out_validation: {len(train)} training clips leave no clips on one side at fraction {fraction}."
        )
    cut = len(train) - num_validation
    return train.select(range(cut)), train.select(range(cut, len(train)))
