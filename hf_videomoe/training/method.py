"""[`TrainingMethod`]: what distinguishes one adversarial-training method from another — its phases and their losses.

A method sees the arguments and, for a loss, one micro-batch's [`StepContext`] (batch, forward pass, adversarial
examples, clean pass): never the trainer. The trainer ([`AdversarialTrainer`]) does everything else: building the
training attacks, backward passes into parameter groups, logging, robust evaluation, model cards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import nn

from .phases import PhaseLoss, TrainingPhase

if TYPE_CHECKING:  # pragma: no cover
    from .arguments import AdversarialTrainingArguments
    from .step import StepContext

__all__ = ["TrainingMethod"]


class TrainingMethod:
    """One adversarial-training method, as [`AdversarialTrainer`] runs it.

    Attributes:
        name: the ``adv_method`` value.
        label: human-readable name (logs, model cards).
        requires_moe: the method trains routers and experts separately and needs an MoE model.
        argument_prefix: prefix of the [`AdversarialTrainingArguments`] fields only this method reads (left out of
            other methods' model cards).
        trainer_name: the trainer class that runs the method.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    requires_moe: ClassVar[bool] = False
    argument_prefix: ClassVar[str | None] = None
    trainer_name: ClassVar[str] = "AdversarialTrainer"

    def phases(self, args: AdversarialTrainingArguments, global_step: int) -> list[TrainingPhase]:
        """The phases of a training step at optimizer step ``global_step``."""
        raise NotImplementedError

    def all_phases(self, args: AdversarialTrainingArguments) -> list[TrainingPhase] | None:
        """Every phase the method may run, when that differs from the phases of any one step (methods that alternate
        between steps); ``None`` otherwise, and the trainer validates the phases of its current step."""
        return None

    def phase_loss(self, step: StepContext, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
        """The loss of ``phase`` on the micro-batch of ``step``, from one forward pass through ``model`` (the module
        the backward pass runs through)."""
        raise NotImplementedError

    def shares_clean_pass(self, args: AdversarialTrainingArguments) -> bool:
        """Whether the losses read the step's shared clean pass ([`StepContext.clean_outputs`])."""
        return False
