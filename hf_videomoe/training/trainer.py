"""`AdversarialTrainer`: a `transformers.Trainer` that trains (MoE) video classifiers on adversarial examples.

Methods: clean training (`none`), PGD-AT (Madry et al., 2018), TRADES (Zhang et al., 2019), AdvMoE-style alternating
router / expert training (Zhang et al., 2023) and single-stage TLAT (temporal Lipschitz AT). J-TLAT lives in
[`JTLATTrainer`](hf_videomoe.training.JTLATTrainer), built on the same machinery.

How a training step runs
------------------------
`Trainer` calls `training_step` once per micro-batch and steps the optimizer after `gradient_accumulation_steps` of
them. A training step here is a list of *phases* ([`TrainingPhase`]): each generates (or reuses) adversarial examples
with the current weights, computes its loss and back-propagates it into its own parameter group only (the other
parameters are frozen by toggling ``requires_grad``), accumulating into ``.grad``. The optimizer step then applies the
sum, so scheduling, clipping, gradient accumulation, mixed precision and checkpointing are Trainer's own.

Under `DistributedDataParallel` only the last backward pass of a micro-batch goes through the DDP wrapper (one forward,
one backward, as DDP requires); the earlier passes run on the unwrapped model, which accumulates local gradients like a
``no_sync`` pass, and DDP's ``find_unused_parameters`` bookkeeping (which records every parameter that received a
local gradient since the last synchronisation) averages them all in that last pass. The number of DDP forward passes
per micro-batch is therefore always one, whatever the data, so processes never disagree on collectives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from ..moe import is_moe_model
from .adversarial import TrainingAttacks, attack_kwargs
from .arguments import AdversarialTrainingArguments
from .callback import AdversarialTrainingCallback, live_adversarial_callback
from .checks import check_evaluation_and_datasets, check_method_fits, forward_parameter_names, raise_if_not_finite
from .methods import build_method, methods_trained_by
from .phases import ForwardOutput, ParameterGroups, PhaseLoss, StepState, TrainingPhase
from .reporting import RobustReportingMixin
from .step import StepContext, model_forward

logger = logging.get_logger(__name__)


class AdversarialTrainer(RobustReportingMixin, Trainer):
    r"""[`~transformers.Trainer`] for adversarial training of video classifiers, MoE or dense.

    Use it exactly like `Trainer`, with [`AdversarialTrainingArguments`] (which pick the method, the training attack
    and the robust evaluation). The adversarial examples are generated inside every training step, on the unwrapped
    model with the current weights (attacks run in eval mode with frozen parameters and restore both).

    Methods (``args.adv_method``; each is a [`TrainingMethod`] of its own module, which defines its phases and
    losses on a [`StepContext`] of the micro-batch): ``"none"`` (clean training, `pgd_at.CleanTraining`),
    ``"pgd-at"`` (default, `pgd_at.PGDAT`), ``"trades"`` (`trades.TRADES`), ``"tlat"`` (`tlat.TLAT`) and
    ``"advmoe"`` (`advmoe.AdvMoE`); J-TLAT is [`JTLATTrainer`].

    Every loss component and routing statistic is averaged between two logging steps and logged next to ``loss``
    (``adv_ce``, ``clean_ce``, ``aux_loss``, ``trades_kl``, ``lipschitz_model``, ``loss_router``, ``loss_expert``,
    ``loss_model``, ``expert_usage_entropy``, and on logging steps ``clean_accuracy``, ``adv_accuracy``,
    ``fgsm_accuracy`` and ``routing_change`` of the training batch; ``catastrophic_overfitting`` = 1 with a warning when
    ``adv_accuracy`` collapses while ``fgsm_accuracy`` rises). `evaluate` adds robust accuracy under ``args.eval_attacks``.

    Example:

    ```python
    >>> from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments
    >>> args = AdversarialTrainingArguments(
    ...     output_dir="out", adv_method="pgd-at", adv_steps=5, eval_attacks=["pgd"], eval_strategy="epoch",
    ...     save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="eval_robust_accuracy_pgd",
    ... )
    >>> trainer = AdversarialTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["test"])
    >>> trainer.train()  # doctest: +SKIP
    ```

    Raises:
        TypeError: ``args`` are plain `TrainingArguments`.
        ValueError: before training, for an unknown or unsupported method, AdvMoE / J-TLAT on a dense model, a dataset
            without labels, a custom ``compute_loss_func``, FSDP / DeepSpeed, or attacks that need an MoE model.
        FloatingPointError: during training, when a loss component is NaN / infinite (no update is applied, except
            those of earlier J-TLAT steps under ``jtlat_update="sequential"``, and no checkpoint is written; the
            message names the component and the last good checkpoint).
    """

    default_adv_method: ClassVar[str] = "pgd-at"
    supported_adv_methods: ClassVar[tuple[str, ...]] = methods_trained_by("AdversarialTrainer")

    def __init__(
        self,
        model: nn.Module | None = None,
        args: AdversarialTrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        model_init=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
    ):
        if args is None:
            args = AdversarialTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, AdversarialTrainingArguments):
            raise TypeError(
                f"{type(self).__name__} needs AdversarialTrainingArguments (a TrainingArguments subclass with the "
                f"adversarial-training settings), got {type(args).__name__}."
            )
        self.adv_method = args.adv_method or self.default_adv_method
        self.method = build_method(self.adv_method)
        self._check_method_supported()
        if compute_loss_func is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own adversarial losses; `compute_loss_func` is not supported. "
                "Subclass and override `compute_phase_loss` to change a loss."
            )
        self._adversarial_callback = AdversarialTrainingCallback(adv_method=self.adv_method)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=[self._adversarial_callback, *(callbacks or [])],
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.step_state: StepState | None = None
        self._phase_terms: dict[str, torch.Tensor] = {}
        self._micro_step = 0
        self._micro_step_global_step = -1
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_counts: dict[str, int] = {}
        self._pending_eval_metrics: dict[str, dict[str, float]] = {}
        self.training_attacks: TrainingAttacks | None = None
        self.robustness_report = None
        self.robustness_reports: dict[str, Any] = {}
        self._setup_adversarial_training()

    # ------------------------------------------------------------------------------------------------------------------
    # Set-up and validation (everything that can be checked before training starts)
    # ------------------------------------------------------------------------------------------------------------------

    def _check_method_supported(self) -> None:
        if self.adv_method in self.supported_adv_methods:
            return
        trainer_name = self.method.trainer_name
        if trainer_name != type(self).__name__:
            raise ValueError(
                f"adv_method={self.adv_method!r} is trained by {trainer_name} (hf_videomoe.training.{trainer_name})."
            )
        raise ValueError(
            f"{type(self).__name__} does not train adv_method={self.adv_method!r}; it supports "
            f"{list(self.supported_adv_methods)} (use AdversarialTrainer for PGD-AT, TRADES, AdvMoE and TLAT)."
        )

    def _setup_adversarial_training(self) -> None:
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        self.is_moe = is_moe_model(model)
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        check_method_fits(self.adv_method, self.method.requires_moe, model, self.is_moe, sharded)
        self.parameter_groups = ParameterGroups(model)
        self._forward_params = forward_parameter_names(model)
        self.training_attacks = TrainingAttacks(args, self.is_moe)
        for phase in self.all_training_phases():
            if phase.parameters != "all" and not self.parameter_groups.parameters(phase.parameters):
                raise ValueError(f"{phase.label} updates {phase.parameters} parameters, but the model has none.")
            if phase.attack not in (None, "trades"):
                self.training_attacks.attack(phase.attack)  # builds and validates every training attack up front
        check_evaluation_and_datasets(args.eval_attacks, self.is_moe, self.train_dataset, self.eval_dataset)

    @property
    def method_label(self) -> str:
        """Human-readable name of the training method (``"PGD-AT"``, ``"J-TLAT"``, ...)."""
        return self.method.label

    # ------------------------------------------------------------------------------------------------------------------
    # Phases
    # ------------------------------------------------------------------------------------------------------------------

    def all_training_phases(self) -> list[TrainingPhase]:
        """Every phase this trainer may run, validated (attacks, parameter groups) before training starts: the
        method's alternation when it has one, else the phases of a step (so an overridden `training_phases` is
        checked too)."""
        phases = self.method.all_phases(self.args)
        return self.training_phases() if phases is None else phases

    def training_phases(self) -> list[TrainingPhase]:
        """The phases of the current training step (called once per micro-batch; may depend on `state.global_step`).

        The method ([`TrainingMethod`]) decides; subclasses override this to add or reorder phases, each phase's
        loss comes from [`compute_phase_loss`].
        """
        return self.method.phases(self.args, self.state.global_step)

    # ------------------------------------------------------------------------------------------------------------------
    # The micro-batch as a method sees it
    # ------------------------------------------------------------------------------------------------------------------

    def step_context(self) -> StepContext:
        """The current micro-batch (``step_state``) with what a method's losses need: the forward pass, the training
        attacks and their seed, the shared clean pass. Built for every loss; the micro-batch's caches stay in
        ``step_state``."""
        unwrap = self.accelerator.unwrap_model
        return StepContext(
            args=self.args,
            state=self.step_state,
            attacks=self.training_attacks,
            is_moe=self.is_moe,
            config=getattr(unwrap(self.model), "config", None),
            unwrap=unwrap,
            seed_parts=self._seed_parts(),
            shares_clean_pass=self.shares_clean_pass,
            callback=self._adversarial_callback_state(),
        )

    def _seed_parts(self) -> tuple[int, ...]:
        return (self.args.seed, self.state.global_step, self._micro_step, self.args.process_index)

    @property
    def shares_clean_pass(self) -> bool:
        """Whether the losses read the shared clean pass ([`clean_outputs`]), which is then also handed to the
        training attacks (`Attack.perturb(clean_outputs=...)`) so that it runs once per micro-batch."""
        return self.method.shares_clean_pass(self.args)

    def compute_phase_loss(self, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
        """The loss of ``phase`` on the current micro-batch (one forward pass through ``model``), as the method
        defines it.

        Override to change a method's objective (the helpers below give the pieces); the per-sample loss is reduced,
        scaled for gradient accumulation and back-propagated into ``phase.parameters`` by `training_step`.
        """
        return self.method.phase_loss(self.step_context(), model, phase)

    # ------------------------------------------------------------------------------------------------------------------
    # Helpers: attacks, forward passes and losses of the current micro-batch (see `StepContext`)
    # ------------------------------------------------------------------------------------------------------------------

    def attack_kwargs(self, name: str, *, eps: float, steps: int, step_size: float | None) -> dict[str, Any]:
        """`build_attack` keyword arguments for attack ``name`` under these arguments (see
        [`~hf_videomoe.training.adversarial.attack_kwargs`])."""
        return attack_kwargs(self.args, name, eps=eps, steps=steps, step_size=step_size)

    def model_forward(self, model: nn.Module, pixel_values: torch.Tensor) -> ForwardOutput:
        """Run ``model`` (wrapped or not) on pixels; MoE models are asked for router logits and the aux loss."""
        return model_forward(model, pixel_values, self.is_moe)

    def top_k(self) -> int:
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        return int(getattr(config, "num_experts_per_tok", 1))

    # ------------------------------------------------------------------------------------------------------------------
    # Losses
    # ------------------------------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """In training mode: the adversarial loss of the current phase (generating its adversarial examples with the
        current weights), normalised like `Trainer.compute_loss` — by ``num_items_in_batch`` when given (and
        multiplied by the number of processes when `average_tokens_across_devices`), else a batch mean. In eval mode:
        the model's clean loss (Trainer's default), which `evaluate` reports as ``eval_loss``.
        """
        if not model.training:
            # The clean loss as the model computes it (a batch mean): `num_items_in_batch` is not forwarded, since
            # Trainer would then rescale a loss the model did not normalise by it.
            model_inputs = {key: value for key, value in inputs.items() if key in self._forward_params}
            return super().compute_loss(model, model_inputs, return_outputs)
        own_state = self.step_state is None
        if own_state:
            self.step_state = StepState.from_inputs(inputs, num_items_in_batch)
        try:
            phase = self.step_state.phase or self.training_phases()[-1]
            loss = self.compute_phase_loss(model, phase)
            self._record_phase(phase, loss)
            reduced = self._reduce(loss.per_sample, num_items_in_batch, self.step_state.batch_size)
        finally:
            if own_state:
                self.step_state = None
        return (reduced, {"loss": reduced, "logits": loss.logits}) if return_outputs else reduced

    def _reduce(self, per_sample: torch.Tensor, num_items_in_batch, batch_size: int) -> torch.Tensor:
        """Sum a (subset of the) batch's per-sample losses into Trainer's normalisation (see `compute_loss`)."""
        total = per_sample.float().sum()
        if num_items_in_batch is not None and self.args.n_gpu <= 1:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
            return loss
        return total / batch_size

    def _backward(self, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """Back-propagate a `_reduce`d loss, dividing by the accumulation steps when it is a batch mean (as
        `Trainer.training_step` does for losses that are not normalised by ``num_items_in_batch``)."""
        if num_items_in_batch is None or self.args.n_gpu > 1:
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
        self.accelerator.backward(loss)
        return loss.detach()

    # ------------------------------------------------------------------------------------------------------------------
    # Training step
    # ------------------------------------------------------------------------------------------------------------------

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Run the phases of this step (attack with the current weights, loss, backward into the phase's parameter
        group) and return the sum of their losses, scaled as `Trainer.training_step` scales its loss."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        if self.state.global_step != self._micro_step_global_step:
            self._micro_step_global_step, self._micro_step = self.state.global_step, 0
        else:
            self._micro_step += 1
        self.step_state = StepState.from_inputs(inputs, num_items_in_batch)
        try:
            phases = self.training_phases()
            if self._micro_step == 0:
                self._adversarial_callback_state().count_phase_updates(phase.name for phase in phases)
            total = torch.zeros((), device=self.args.device)
            for index, phase in enumerate(phases):
                self.step_state.phase = phase
                total = total + self.train_phase(model, phase, final=index == len(phases) - 1)
            if self._micro_step == 0 and self._is_logging_step():
                self._record_training_diagnostics(model)
        finally:
            self.step_state = None
        return total

    def train_phase(self, model: nn.Module, phase: TrainingPhase, final: bool) -> torch.Tensor:
        """Compute ``phase``'s loss and back-propagate it into ``phase.parameters`` only. ``final`` marks the last
        backward pass of the micro-batch: the only one that synchronises gradients across processes."""
        num_items = self.step_state.num_items_in_batch
        self._phase_terms = {}
        with self.parameter_groups.only(phase.parameters), self.compute_loss_context_manager():
            loss = self.compute_loss(self.pass_model(model, final), {}, num_items_in_batch=num_items)
            self._raise_if_not_finite(phase)
            return self._backward(loss, num_items)

    def pass_model(self, model: nn.Module, final: bool) -> nn.Module:
        """The module a backward pass runs through: the (DDP-)wrapped ``model`` for the last pass of a micro-batch,
        the unwrapped model for earlier passes when several processes train (they must not trigger DDP's gradient
        synchronisation, which the last pass performs for every gradient accumulated since)."""
        if final or self.accelerator.num_processes == 1:
            return model
        return self.accelerator.unwrap_model(model)

    # ------------------------------------------------------------------------------------------------------------------
    # NaN guard
    # ------------------------------------------------------------------------------------------------------------------

    def _raise_if_not_finite(self, phase: TrainingPhase, terms: Mapping[str, torch.Tensor] | None = None) -> None:
        """Raise `FloatingPointError` if a loss term of ``phase`` is NaN / infinite on any process (see
        [`~hf_videomoe.training.checks.raise_if_not_finite`]); called after the forward pass of every phase, before its
        backward pass, so the bad batch never reaches the optimizer and no checkpoint is written after it."""
        raise_if_not_finite(
            self._phase_terms if terms is None else terms,
            phase.label,
            self.state.global_step + 1,
            self.accelerator,
            self.args.device,
            self._last_checkpoint,
        )

    def _last_checkpoint(self) -> str | None:
        return self._adversarial_callback_state().last_good_checkpoint(self.args.output_dir)

    def _adversarial_callback_state(self) -> AdversarialTrainingCallback:
        return live_adversarial_callback(self.callback_handler.callbacks, self._adversarial_callback)
