"""Checks an adversarial trainer runs on its model and datasets before training starts."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import IterableDataset

from ..attacks import ATTACKS

__all__ = [
    "catastrophic_overfitting",
    "check_evaluation_and_datasets",
    "check_labelled",
    "check_method_fits",
    "forward_parameter_names",
    "raise_if_not_finite",
]


def forward_parameter_names(model: nn.Module) -> set[str]:
    """Named parameters of ``model.forward`` (extra dataset columns are not passed to the model)."""
    parameters = inspect.signature(model.forward).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_method_fits(adv_method: str, requires_moe: bool, model: nn.Module, is_moe: bool, sharded: bool) -> None:
    """Raise a `ValueError` if the method cannot train ``model``: it needs an MoE model (``requires_moe``) and
    ``model`` is dense, or it attacks inside the training step and the parameters are ``sharded`` (FSDP / DeepSpeed).
    """
    if requires_moe and not is_moe:
        raise ValueError(
            f"adv_method={adv_method!r} trains routers and experts separately and needs a Mixture-of-Experts "
            f"model, but {type(model).__name__} has no MoE layer. Upcycle it with "
            "`VideoMAEMoeForVideoClassification.from_dense(...)` or use pgd-at / trades / tlat."
        )
    if adv_method != "none" and sharded:
        raise ValueError(
            "Adversarial training runs attacks on the unwrapped model inside the training step, which FSDP and "
            "DeepSpeed (sharded parameters) do not allow; use DistributedDataParallel (the default) instead."
        )


def check_evaluation_and_datasets(eval_attacks: list[str], is_moe: bool, train_dataset, eval_dataset) -> None:
    """Raise a `ValueError` for an evaluation attack that needs an MoE model on a dense one, or a dataset without
    labels (the evaluation datasets only matter with ``eval_attacks``; ``eval_dataset`` may be a dict of them)."""
    for name in eval_attacks:
        if ATTACKS[name].requires_moe and not is_moe:
            raise ValueError(f"eval_attacks contains {name!r}, which needs a Mixture-of-Experts model.")
    check_labelled(train_dataset, "train_dataset")
    if eval_attacks and eval_dataset is not None:
        datasets = eval_dataset.values() if isinstance(eval_dataset, Mapping) else [eval_dataset]
        for dataset in datasets:
            check_labelled(dataset, "eval_dataset")


def check_labelled(dataset, name: str) -> None:
    """Raise a `ValueError` if ``dataset`` visibly has no labels (its columns, or the keys of its first example)."""
    if dataset is None:
        return
    keys = None
    column_names = getattr(dataset, "column_names", None)
    has_transform = getattr(dataset, "format", {}).get("type") == "custom" if hasattr(dataset, "format") else False
    if isinstance(column_names, list) and not has_transform:
        keys = column_names
    elif hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and not isinstance(dataset, IterableDataset):
        if len(dataset) == 0:
            raise ValueError(f"{name} is empty.")
        first = dataset[0]
        if isinstance(first, Mapping):
            keys = list(first)
    if keys is not None and not any(key in keys for key in ("labels", "label", "label_ids")):
        raise ValueError(
            f"{name} has no labels (columns: {sorted(keys)}); adversarial training and robust evaluation need a "
            "'labels' (or 'label') column."
        )


def raise_if_not_finite(
    terms: Mapping[str, Any],
    label: str,
    step: int,
    accelerator: Any,
    device: torch.device,
    last_checkpoint: Callable[[], str | None],
) -> None:
    """Raise `FloatingPointError` naming the non-finite loss terms of phase ``label`` at optimizer step ``step``, and
    where the last good checkpoint is. Collective: with several processes every one raises together."""
    names = [name for name, value in terms.items() if torch.is_tensor(value)]
    if not names:
        return
    codes = torch.stack(
        [
            torch.where(
                torch.isnan(terms[n].detach().float()).any(),
                2.0,
                torch.where(torch.isinf(terms[n].detach().float()).any(), 1.0, 0.0),
            )
            for n in names
        ]
    ).to(device)
    if accelerator.num_processes > 1:
        codes = accelerator.gather(codes[None]).amax(dim=0)
    if not bool(codes.any()):
        return
    bad = [n for n, c in zip(names, codes.tolist()) if c > 0]
    kind = "NaN" if bool((codes == 2).any()) else "infinite"
    checkpoint = last_checkpoint()
    if checkpoint and os.path.isdir(checkpoint):
        where = f"the last good checkpoint is kept at {checkpoint}"
    else:
        where = "no checkpoint has been saved yet"
    raise FloatingPointError(
        f"{label} loss is {kind} at step {step} (non-finite terms: {', '.join(bad)}); training stopped before the "
        f"optimizer step and {where}. Lower the learning rate or λ (lipschitz_weight), or enable gradient clipping "
        "(max_grad_norm)."
    )


def catastrophic_overfitting(history: list[tuple[float, float]], collapse: float = 0.5, gap: float = 0.3) -> bool:
    """Whether a run shows catastrophic overfitting (Wong et al., 2020, "Fast is better than free").

    ``history`` holds ``(multi-step adversarial accuracy, FGSM accuracy)`` of the training batches, one pair per
    logging step, oldest first. The latest pair counts as catastrophic overfitting when the multi-step accuracy has
    fallen below ``collapse`` times its best so far, the FGSM accuracy is above its value at that best, and FGSM
    accuracy exceeds the multi-step accuracy by more than ``gap``: the model defeats the single-step attack only.
    """
    if len(history) < 2:
        return False
    best = max(range(len(history) - 1), key=lambda i: history[i][0])
    best_adv, fgsm_at_best = history[best]
    adv, fgsm = history[-1]
    return best_adv > 0 and adv < collapse * best_adv and fgsm > fgsm_at_best and fgsm - adv > gap
