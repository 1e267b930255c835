"""Training phases (which loss updates which parameters), what the phases of one micro-batch share, and the seeds
of their attacks."""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..moe import named_expert_parameters, named_router_parameters

__all__ = [
    "PARAMETER_GROUPS",
    "ForwardOutput",
    "ParameterGroups",
    "PhaseLoss",
    "StepState",
    "TrainingPhase",
    "step_seed",
]

PARAMETER_GROUPS = ("all", "router", "expert", "non_router")


@dataclass(frozen=True)
class TrainingPhase:
    """One sub-step of a training step: which loss it minimises and which parameters it updates.

    Attributes:
        name: ``"router"``, ``"expert"`` or ``"model"`` (the loss family; used in logged metric names).
        label: human-readable name used in log and error messages (e.g. ``"J-TLAT step 2 (expert)"``).
        parameters: the parameter group that receives this phase's gradient: ``"all"``, ``"router"``, ``"expert"``
            or ``"non_router"``.
        attack: name of the attack generating this phase's adversarial examples (``None``: clean inputs;
            ``"trades"``: TRADES' own KL maximisation).
    """

    name: str
    label: str
    parameters: str = "all"
    attack: str | None = None


class ParameterGroups:
    """Router / expert split of a model's parameters, computed once, and a context manager that lets gradients reach
    only one group (by toggling ``requires_grad``; parameters the user froze stay frozen)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.router_ids = {id(p) for _, p in named_router_parameters(model)}
        self.expert_ids = {id(p) for _, p in named_expert_parameters(model)}

    def selects(self, group: str, param: nn.Parameter) -> bool:
        if group == "all":
            return True
        if group == "router":
            return id(param) in self.router_ids
        if group == "expert":
            return id(param) in self.expert_ids
        if group == "non_router":
            return id(param) not in self.router_ids
        raise ValueError(f"Unknown parameter group {group!r}; expected one of {PARAMETER_GROUPS}.")

    def parameters(self, group: str) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if self.selects(group, p)]

    @contextlib.contextmanager
    def only(self, group: str):
        """Inside the block only ``group`` requires grad; flags are restored on exit (also after an exception)."""
        if group == "all":
            yield
            return
        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag and self.selects(group, p))
            yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)


def step_seed(*parts: int | str) -> int:
    """A 63-bit attack seed derived from integers and strings (stable across runs, processes and Python versions)."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class PhaseLoss:
    """Result of [`AdversarialTrainer.compute_phase_loss`].

    Attributes:
        per_sample: the phase objective per clip, ``(batch,)`` (what gets reduced and back-propagated).
        terms: named loss components for logging (per-sample tensors or scalars, detached or not).
        logits: logits of the forward pass (for ``return_outputs``), if any.
    """

    per_sample: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


@dataclass
class ForwardOutput:
    """Logits, router logits (MoE models) and weighted auxiliary loss of one forward pass."""

    logits: torch.Tensor
    router_logits: tuple[torch.Tensor, ...] | None = None
    aux_loss: torch.Tensor | None = None


@dataclass
class StepState:
    """What the phases of one micro-batch share: the clean batch, its adversarial examples (per attack), the
    adversarial router logits of the router step, the clean outputs used as Lipschitz targets."""

    pixel_values: torch.Tensor
    labels: torch.Tensor
    num_items_in_batch: Any = None
    phase: TrainingPhase | None = None
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)
    adv_router_logits: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    clean: ForwardOutput | None = None
    main_attack: str | None = None

    @property
    def batch_size(self) -> int:
        return self.pixel_values.shape[0]

    @classmethod
    def from_inputs(cls, inputs, num_items_in_batch) -> "StepState":
        """The state of a micro-batch; `ValueError` if it lacks pixels or labels."""
        if "pixel_values" not in inputs:
            raise ValueError(f"The training batch has no 'pixel_values' (keys: {sorted(inputs)}).")
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"Adversarial training needs labels, but the training batch has none (keys: {sorted(inputs)}). "
                "Give the dataset a 'labels' (or 'label') column."
            )
        return cls(pixel_values=inputs["pixel_values"], labels=labels, num_items_in_batch=num_items_in_batch)
