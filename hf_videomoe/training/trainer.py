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

import inspect
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import IntervalStrategy, get_last_checkpoint
from transformers.utils import logging

from ..attacks import ATTACKS, attack_mode, build_attack
from ..attacks.objectives import lipschitz_ratio
from ..evaluation import evaluate_robustness
from ..hub import build_model_card, push_robust_checkpoint
from ..moe import is_moe_model
from ._utils import (
    ParameterGroups,
    TrainingPhase,
    cross_entropy,
    expert_usage_entropy,
    kl_divergence,
    routing_change,
    split_router_logits,
    step_seed,
    trades_adversarial,
)
from .arguments import MOE_ONLY_METHODS, ROBUST_METRIC_PREFIX, WORST_CASE_METRIC, AdversarialTrainingArguments

logger = logging.get_logger(__name__)

METHOD_LABELS = {
    "none": "Clean training",
    "pgd-at": "PGD-AT",
    "trades": "TRADES",
    "advmoe": "AdvMoE",
    "tlat": "TLAT",
    "j-tlat": "J-TLAT",
}
# Model outputs that are not predictions: never gathered by `evaluate` (router logits are ragged across batches).
_NON_PREDICTION_KEYS = ["aux_loss", "router_logits", "hidden_states", "attentions"]
# Attacks of the paper that take the temporal-step and Lipschitz / guidance / router weights.
_PAPER_ATTACK_KWARGS = ("lipschitz_weight", "guidance_weight", "router_weight", "temporal_momentum", "temporal_step")


class AdversarialTrainingCallback(TrainerCallback, ExportableState):
    """Bookkeeping of an adversarial run, saved in every checkpoint's ``trainer_state.json``.

    It records the method, how many optimizer steps included each phase (``phase_updates``, e.g. J-TLAT's router /
    expert / model steps or AdvMoE's alternation) and how many adversarial batches this process generated, and
    restores them when training resumes from a checkpoint (whatever `restore_callback_states_from_checkpoint` says,
    since they describe the run rather than a user setting). Nothing here influences the weights: the adversarial
    examples of a step are seeded from `(seed, global_step, micro-batch, process)`, so a resumed run replays the
    uninterrupted one exactly. The callback also remembers the last checkpoint saved, which the NaN guard reports.
    """

    def __init__(self, adv_method: str | None = None):
        self.adv_method = adv_method
        self.phase_updates: dict[str, int] = {}
        self.adversarial_batches = 0
        self.last_checkpoint: str | None = None

    def state(self) -> dict:
        return {
            "args": {"adv_method": self.adv_method},
            "attributes": {
                "phase_updates": dict(self.phase_updates),
                "adversarial_batches": self.adversarial_batches,
                "last_checkpoint": self.last_checkpoint,
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        callbacks = state.stateful_callbacks
        stored = callbacks.get(type(self).__name__) if isinstance(callbacks, dict) else None
        if isinstance(stored, list):
            stored = stored[0] if stored else None
        if not stored:
            return
        method = stored.get("args", {}).get("adv_method")
        if method is not None and method != self.adv_method:
            logger.warning(
                f"Resuming a checkpoint trained with adv_method={method!r} using adv_method={self.adv_method!r}."
            )
        attributes = stored.get("attributes", {})
        self.phase_updates = dict(attributes.get("phase_updates", {}))
        self.adversarial_batches = int(attributes.get("adversarial_batches", 0))
        self.last_checkpoint = attributes.get("last_checkpoint", self.last_checkpoint)

    def on_save(self, args, state, control, **kwargs):
        self.last_checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")


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
class _StepState:
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


class AdversarialTrainer(Trainer):
    r"""[`~transformers.Trainer`] for adversarial training of video classifiers, MoE or dense.

    Use it exactly like `Trainer`, with [`AdversarialTrainingArguments`] (which pick the method, the training attack
    and the robust evaluation). The adversarial examples are generated inside every training step, on the unwrapped
    model with the current weights (attacks run in eval mode with frozen parameters and restore both).

    Methods (``args.adv_method``):

    - ``"none"``: clean cross-entropy (+ the MoE auxiliary loss) — the baseline, with robust evaluation.
    - ``"pgd-at"`` (default): ``CE(F(x_adv), y)`` + aux, ``x_adv`` from ``args.adv_attack`` (default PGD).
    - ``"trades"``: ``CE(F(x), y) + β · KL(F(x) ‖ F(x_adv))`` + aux, ``x_adv`` maximising the KL (``β = trades_beta``).
    - ``"tlat"``: single-stage temporal Lipschitz AT, ``CE(F(x_adv), y) + λ · L_Lip(F; x, x_adv)`` + aux on TLA-M
      examples.
    - ``"advmoe"``: AdvMoE-style alternation: even optimizer steps update every non-router parameter on PGD examples,
      odd steps update only the routers on ``advmoe_router_attack`` examples; both minimise ``CE(F(x_adv), y)`` + aux.

    Every loss component and routing statistic is averaged between two logging steps and logged next to ``loss``
    (``adv_ce``, ``clean_ce``, ``aux_loss``, ``trades_kl``, ``lipschitz_model``, ``loss_router``, ``loss_expert``,
    ``loss_model``, ``expert_usage_entropy``, and on logging steps ``clean_accuracy``, ``adv_accuracy`` and
    ``routing_change`` of the training batch). `evaluate` adds robust accuracy under ``args.eval_attacks``.

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
        FloatingPointError: during training, when a loss component is NaN / infinite (no update is applied and no
            checkpoint is written; the message names the component and the last good checkpoint).
    """

    default_adv_method: ClassVar[str] = "pgd-at"
    supported_adv_methods: ClassVar[tuple[str, ...]] = ("none", "pgd-at", "trades", "advmoe", "tlat")

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
        self._step: _StepState | None = None
        self._phase_terms: dict[str, torch.Tensor] = {}
        self._micro_step = 0
        self._micro_step_global_step = -1
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_counts: dict[str, int] = {}
        self._pending_eval_metrics: dict[str, dict[str, float]] = {}
        self._attacks: dict[str, Any] = {}
        self.robustness_report = None
        self.robustness_reports: dict[str, Any] = {}
        self._setup_adversarial_training()

    # ------------------------------------------------------------------------------------------------------------------
    # Set-up and validation (everything that can be checked before training starts)
    # ------------------------------------------------------------------------------------------------------------------

    def _check_method_supported(self) -> None:
        if self.adv_method in self.supported_adv_methods:
            return
        if self.adv_method == "j-tlat":
            raise ValueError("adv_method='j-tlat' is trained by JTLATTrainer (hf_videomoe.training.JTLATTrainer).")
        raise ValueError(
            f"{type(self).__name__} does not train adv_method={self.adv_method!r}; it supports "
            f"{list(self.supported_adv_methods)} (use AdversarialTrainer for PGD-AT, TRADES, AdvMoE and TLAT)."
        )

    def _setup_adversarial_training(self) -> None:
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        self.is_moe = is_moe_model(model)
        if self.adv_method in MOE_ONLY_METHODS and not self.is_moe:
            raise ValueError(
                f"adv_method={self.adv_method!r} trains routers and experts separately and needs a Mixture-of-Experts "
                f"model, but {type(model).__name__} has no MoE layer. Upcycle it with "
                "`VideoMAEMoeForVideoClassification.from_dense(...)` or use pgd-at / trades / tlat."
            )
        if self.adv_method != "none" and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                "Adversarial training runs attacks on the unwrapped model inside the training step, which FSDP and "
                "DeepSpeed (sharded parameters) do not allow; use DistributedDataParallel (the default) instead."
            )
        self.parameter_groups = ParameterGroups(model)
        self._forward_params = _forward_parameter_names(model)
        for phase in self._all_phases():
            if phase.parameters != "all" and not self.parameter_groups.parameters(phase.parameters):
                raise ValueError(f"{phase.label} updates {phase.parameters} parameters, but the model has none.")
            if phase.attack not in (None, "trades"):
                self._attack(phase.attack)  # builds and validates every training attack up front
        for name in args.eval_attacks:
            if ATTACKS[name].requires_moe and not self.is_moe:
                raise ValueError(f"eval_attacks contains {name!r}, which needs a Mixture-of-Experts model.")
        _check_labelled(self.train_dataset, "train_dataset")
        if args.eval_attacks and self.eval_dataset is not None:
            datasets = self.eval_dataset.values() if isinstance(self.eval_dataset, Mapping) else [self.eval_dataset]
            for dataset in datasets:
                _check_labelled(dataset, "eval_dataset")

    def _all_phases(self) -> list[TrainingPhase]:
        """Every phase this trainer may run (used to validate attacks and parameter groups up front)."""
        if self.adv_method == "advmoe":
            return [self._advmoe_phase(0), self._advmoe_phase(1)]
        return self.training_phases()

    @property
    def method_label(self) -> str:
        """Human-readable name of the training method (``"PGD-AT"``, ``"J-TLAT"``, ...)."""
        return METHOD_LABELS[self.adv_method]

    # ------------------------------------------------------------------------------------------------------------------
    # Phases
    # ------------------------------------------------------------------------------------------------------------------

    def training_phases(self) -> list[TrainingPhase]:
        """The phases of the current training step (called once per micro-batch; may depend on `state.global_step`).

        Subclasses override this to add or reorder phases; each phase's loss comes from [`compute_phase_loss`].
        """
        args = self.args
        if self.adv_method == "advmoe":
            return [self._advmoe_phase(self.state.global_step)]
        attack = {
            "none": None,
            "pgd-at": args.adv_attack or "pgd",
            "trades": "trades",
            "tlat": args.adv_attack or "tla-m",
        }[self.adv_method]
        return [TrainingPhase("model", self.method_label, "all", attack)]

    def _advmoe_phase(self, global_step: int) -> TrainingPhase:
        if global_step % 2 == 0:
            return TrainingPhase("expert", "AdvMoE expert step", "non_router", self.args.adv_attack or "pgd")
        return TrainingPhase("router", "AdvMoE router step", "router", self.args.advmoe_router_attack)

    # ------------------------------------------------------------------------------------------------------------------
    # Attacks
    # ------------------------------------------------------------------------------------------------------------------

    def attack_kwargs(self, name: str, *, eps: float, steps: int, step_size: float | None) -> dict[str, Any]:
        """`build_attack` keyword arguments for attack ``name`` under these arguments.

        The paper's attacks (those with temporal adaptive steps: ``tla-*``, ``tlga-r``, ``j-tla``, ``j-tlga``) also get
        λ, γ1, γ2, β and the temporal step rule; standard attacks keep their own (uniform-step) defaults.
        """
        args = self.args
        cls = ATTACKS[name]
        kwargs: dict[str, Any] = {"eps": eps, "steps": steps, "norm": args.adv_norm}
        if step_size is not None:
            kwargs["step_size"] = step_size
        if getattr(cls, "default_temporal_step", None) == "published":
            kwargs.update({key: getattr(args, key) for key in _PAPER_ATTACK_KWARGS})
        accepted = cls.accepted_kwargs()
        return {key: value for key, value in kwargs.items() if key in accepted}

    def _attack(self, name: str):
        """The training attack ``name`` (built once; its seed is set before every call)."""
        if name not in self._attacks:
            args = self.args
            kwargs = self.attack_kwargs(name, eps=args.adv_eps, steps=args.adv_steps, step_size=args.adv_step_size)
            if "selection" in ATTACKS[name].accepted_kwargs():
                # Training maximises the attack objective (Madry's inner maximisation): keep the iterate with the
                # highest objective rather than the first one that fools the model.
                kwargs["selection"] = "objective"
            attack = build_attack(name, **kwargs)
            if attack.requires_moe and not self.is_moe:
                raise ValueError(f"The training attack {name!r} needs a Mixture-of-Experts model.")
            self._attacks[name] = attack
        return self._attacks[name]

    def attack_seed(self, slot: str) -> int:
        """Seed of an attack call: a function of ``args.seed``, the global step, the micro-batch, the process and
        ``slot``, so that a run resumed from a checkpoint generates exactly the same adversarial examples."""
        return step_seed(
            self.args.seed, self.state.global_step, self._micro_step, self.args.process_index, slot
        )

    def adversarial_examples(self, model: nn.Module, attack: str | None) -> torch.Tensor:
        """Adversarial pixels of the current micro-batch for ``attack`` (generated once per step and shared by every
        phase that uses the same attack), computed on the unwrapped ``model`` with its current weights."""
        step = self._step
        if attack is None:
            return step.pixel_values
        if attack not in step.adversarial:
            unwrapped = self.accelerator.unwrap_model(model)
            seed = self.attack_seed(attack)
            if attack == "trades":
                args = self.args
                adv = trades_adversarial(
                    unwrapped,
                    step.pixel_values,
                    eps=args.adv_eps,
                    steps=args.adv_steps,
                    step_size=args.adv_step_size,
                    norm=args.adv_norm,
                    seed=seed,
                    logits_fn=lambda m, x: self._forward(m, x).logits,
                )
            else:
                attack_obj = self._attack(attack)
                attack_obj.seed = seed
                clean = None
                if self.shares_clean_pass:
                    out = self.clean_outputs(model)
                    clean = (out.logits, out.router_logits)
                adv = attack_obj.perturb(unwrapped, step.pixel_values, step.labels, clean_outputs=clean)
            step.adversarial[attack] = adv.detach()
            self._adversarial_callback_state().adversarial_batches += 1
        step.main_attack = attack
        return step.adversarial[attack]

    # ------------------------------------------------------------------------------------------------------------------
    # Forward helpers
    # ------------------------------------------------------------------------------------------------------------------

    def _forward(self, model: nn.Module, pixel_values: torch.Tensor) -> ForwardOutput:
        """Run ``model`` (wrapped or not) on pixels; MoE models are asked for router logits and the aux loss."""
        kwargs = {"output_router_logits": True} if self.is_moe else {}
        out = model(pixel_values=pixel_values, **kwargs)
        if isinstance(out, torch.Tensor):
            return ForwardOutput(out, None, None)
        if isinstance(out, (tuple, list)):
            return ForwardOutput(out[0], None, None)
        router_logits = getattr(out, "router_logits", None)
        return ForwardOutput(
            out["logits"], tuple(router_logits) if router_logits else None, getattr(out, "aux_loss", None)
        )

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, labels, self.args.label_smoothing_factor)

    def _top_k(self) -> int:
        return int(getattr(self.accelerator.unwrap_model(self.model).config, "num_experts_per_tok", 1))

    # ------------------------------------------------------------------------------------------------------------------
    # Losses
    # ------------------------------------------------------------------------------------------------------------------

    def compute_phase_loss(self, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
        """The loss of ``phase`` on the current micro-batch (one forward pass through ``model``).

        Override to change a method's objective; the per-sample loss is reduced, scaled for gradient accumulation and
        back-propagated into ``phase.parameters`` by `training_step`.
        """
        step = self._step
        x, y = step.pixel_values, step.labels
        method = self.adv_method
        if method == "none":
            out = self._forward(model, x)
            ce = self._ce(out.logits, y)
            return self._with_aux(PhaseLoss(ce, {"clean_ce": ce}, out.logits), out)
        x_adv = self.adversarial_examples(model, phase.attack)
        if method in ("pgd-at", "advmoe"):
            out = self._forward(model, x_adv)
            ce = self._ce(out.logits, y)
            return self._with_aux(PhaseLoss(ce, {"adv_ce": ce}, out.logits), out)
        if method == "trades":
            out = self._forward(model, torch.cat([x, x_adv]))
            clean_logits, adv_logits = out.logits.split(step.batch_size)
            clean_ce = self._ce(clean_logits, y)
            kl = kl_divergence(clean_logits, adv_logits)
            terms = {"clean_ce": clean_ce, "trades_kl": kl, "adv_ce": self._ce(adv_logits.detach(), y)}
            return self._with_aux(PhaseLoss(clean_ce + self.args.trades_beta * kl, terms, adv_logits), out)
        if method in ("tlat", "j-tlat"):
            return self.lipschitz_model_loss(model, x, x_adv, y)
        raise ValueError(f"No loss for phase {phase.name!r} of adv_method={method!r}.")

    def lipschitz_model_loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> PhaseLoss:
        """``CE(F(x_adv), y) + λ · L_Lip(F; x, x_adv)`` + aux (TLAT, J-TLAT step 3).

        With ``lipschitz_detach_clean`` (default) ``F(x)`` comes from the step's shared clean forward pass without
        gradient; otherwise ``[x, x_adv]`` go through one forward pass and both sides get gradients. With λ = 0 only
        ``x_adv`` is forwarded.
        """
        weight = self.args.lipschitz_weight
        if weight == 0:
            out = self._forward(model, x_adv)
            ce = self._ce(out.logits, y)
            return self._with_aux(PhaseLoss(ce, {"adv_ce": ce}, out.logits), out)
        if self.args.lipschitz_detach_clean:
            clean_logits = self.clean_outputs(model).logits
            out = self._forward(model, x_adv)
            adv_logits = out.logits
        else:
            out = self._forward(model, torch.cat([x, x_adv]))
            clean_logits, adv_logits = out.logits.split(x.shape[0])
        ce = self._ce(adv_logits, y)
        lip = lipschitz_ratio(clean_logits, adv_logits, x, x_adv)
        terms = {"adv_ce": ce, "lipschitz_model": lip, "clean_ce": self._ce(clean_logits.detach(), y)}
        return self._with_aux(PhaseLoss(ce + weight * lip, terms, adv_logits), out)

    def clean_outputs(self, model: nn.Module) -> ForwardOutput:
        """Outputs on the clean clips of the micro-batch, without gradient: the targets of the Lipschitz terms and of
        the routing consistency when ``lipschitz_detach_clean`` is set. One eval-mode forward pass of the unwrapped
        model per micro-batch (a fixed target carries no dropout noise), shared by every phase and by the training
        attacks, which would otherwise each run the same clean pass (see [`shares_clean_pass`])."""
        step = self._step
        if step.clean is None:
            unwrapped = self.accelerator.unwrap_model(model)
            with attack_mode(unwrapped, grad=False):
                step.clean = self._forward(unwrapped, step.pixel_values)
        return step.clean

    @property
    def shares_clean_pass(self) -> bool:
        """Whether the losses read the shared clean pass ([`clean_outputs`]), which is then also handed to the
        training attacks (`Attack.perturb(clean_outputs=...)`) so that it runs once per micro-batch."""
        args = self.args
        if not args.lipschitz_detach_clean:
            return False
        return self.adv_method == "j-tlat" or (self.adv_method == "tlat" and args.lipschitz_weight != 0)

    def _with_aux(self, loss: PhaseLoss, out: ForwardOutput) -> PhaseLoss:
        """Add the model's (already weighted) MoE auxiliary loss, and record the expert-usage entropy."""
        if out.aux_loss is not None:
            # `.mean()`: DataParallel returns one aux loss per replica.
            loss.per_sample = loss.per_sample + out.aux_loss.float().mean()
            loss.terms["aux_loss"] = out.aux_loss
        if out.router_logits:
            loss.terms["expert_usage_entropy"] = expert_usage_entropy(out.router_logits, self._top_k())
        return loss

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
        own_state = self._step is None
        if own_state:
            self._step = self._new_step_state(inputs, num_items_in_batch)
        try:
            phase = self._step.phase or self.training_phases()[-1]
            loss = self.compute_phase_loss(model, phase)
            self._record_phase(phase, loss)
            reduced = self._reduce(loss.per_sample, num_items_in_batch, self._step.batch_size)
        finally:
            if own_state:
                self._step = None
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

    def _new_step_state(self, inputs: Mapping[str, Any], num_items_in_batch) -> _StepState:
        if "pixel_values" not in inputs:
            raise ValueError(f"The training batch has no 'pixel_values' (keys: {sorted(inputs)}).")
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"Adversarial training needs labels, but the training batch has none (keys: {sorted(inputs)}). "
                "Give the dataset a 'labels' (or 'label') column."
            )
        return _StepState(pixel_values=inputs["pixel_values"], labels=labels, num_items_in_batch=num_items_in_batch)

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
        self._step = self._new_step_state(inputs, num_items_in_batch)
        try:
            phases = self.training_phases()
            if self._micro_step == 0:
                counts = self._adversarial_callback_state().phase_updates
                for phase in phases:
                    for name in phase.name.split("+"):
                        counts[name] = counts.get(name, 0) + 1
            total = torch.zeros((), device=self.args.device)
            for index, phase in enumerate(phases):
                self._step.phase = phase
                total = total + self.train_phase(model, phase, final=index == len(phases) - 1)
            if self._micro_step == 0 and self._is_logging_step():
                self._record_training_diagnostics(model)
        finally:
            self._step = None
        return total

    def train_phase(self, model: nn.Module, phase: TrainingPhase, final: bool) -> torch.Tensor:
        """Compute ``phase``'s loss and back-propagate it into ``phase.parameters`` only. ``final`` marks the last
        backward pass of the micro-batch: the only one that synchronises gradients across processes."""
        num_items = self._step.num_items_in_batch
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
        """Raise `FloatingPointError` if a loss term of ``phase`` is NaN / infinite on any process.

        Called after the forward pass of every phase (before its backward pass; after all passes of J-TLAT's expert
        step), so the bad batch never reaches the optimizer, and (by raising out of `train`) no checkpoint is written
        after it. The check is collective, so every process raises together.
        """
        terms = self._phase_terms if terms is None else terms
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
        ).to(self.args.device)
        if self.accelerator.num_processes > 1:
            codes = self.accelerator.gather(codes[None]).amax(dim=0)
        if not bool(codes.any()):
            return
        bad = [n for n, c in zip(names, codes.tolist()) if c > 0]
        kind = "NaN" if bool((codes == 2).any()) else "infinite"
        checkpoint = self._adversarial_callback_state().last_checkpoint
        if checkpoint is None and os.path.isdir(self.args.output_dir):
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint and os.path.isdir(checkpoint):
            where = f"the last good checkpoint is kept at {checkpoint}"
        else:
            where = "no checkpoint has been saved yet"
        raise FloatingPointError(
            f"{phase.label} loss is {kind} at step {self.state.global_step + 1} (non-finite terms: {', '.join(bad)}); "
            f"training stopped before the optimizer step and {where}. Lower the learning rate or λ "
            "(lipschitz_weight), or enable gradient clipping (max_grad_norm)."
        )

    # ------------------------------------------------------------------------------------------------------------------
    # Metrics
    # ------------------------------------------------------------------------------------------------------------------

    def _record_phase(self, phase: TrainingPhase, loss: PhaseLoss) -> None:
        """Keep the phase's terms for the NaN check and accumulate their means for `log`."""
        terms = dict(loss.terms)
        if not any(name.startswith("loss_") for name in terms):  # a fused phase reports its parts itself
            terms = {f"loss_{phase.name}": loss.per_sample, **terms}
        self._phase_terms = terms
        for name, value in terms.items():
            self._accumulate(name, value)

    def _accumulate(self, name: str, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value).detach().float().mean().to(self.args.device)
        if name in self._metric_sums:
            self._metric_sums[name] = self._metric_sums[name] + value
            self._metric_counts[name] += 1
        else:
            self._metric_sums[name] = value
            self._metric_counts[name] = 1

    def _is_logging_step(self) -> bool:
        """Whether the optimizer step in progress will be logged (diagnostics are only computed for those)."""
        args, step = self.args, self.state.global_step + 1
        if args.logging_strategy == IntervalStrategy.NO:
            return False
        if args.logging_strategy == IntervalStrategy.STEPS:
            every = self.state.logging_steps or 1
            return (args.logging_first_step and step == 1) or step % every == 0 or step == self.state.max_steps
        return True

    @torch.no_grad()
    def _record_training_diagnostics(self, model: nn.Module) -> None:
        """Clean / adversarial accuracy and routing change of the training batch (one eval-mode forward pass)."""
        step = self._step
        if step.main_attack is None:
            return
        x, y = step.pixel_values, step.labels
        x_adv = step.adversarial[step.main_attack]
        unwrapped = self.accelerator.unwrap_model(model)
        with attack_mode(unwrapped, grad=False):
            out = self._forward(unwrapped, torch.cat([x, x_adv]))
        clean_logits, adv_logits = out.logits.split(step.batch_size)
        self._accumulate("clean_accuracy", (clean_logits.argmax(-1) == y).float())
        self._accumulate("adv_accuracy", (adv_logits.argmax(-1) == y).float())
        if out.router_logits:
            clean_rl, adv_rl = split_router_logits(out.router_logits, step.batch_size)
            self._accumulate("routing_change", routing_change(clean_rl, adv_rl, self._top_k()))

    def _pop_training_metrics(self) -> dict[str, float]:
        """Means of the accumulated components since the last log, averaged over processes."""
        if not self._metric_sums:
            return {}
        names = sorted(self._metric_sums)
        means = torch.stack([self._metric_sums[n] / self._metric_counts[n] for n in names])
        if self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means, reduction="mean")
        self._metric_sums, self._metric_counts = {}, {}
        return {name: round(float(value), 6) for name, value in zip(names, means.tolist())}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the adversarial loss components and routing statistics to the training logs (means since the last
        log), and the robust-evaluation metrics to the evaluation logs, then log as `Trainer.log` does."""
        if "loss" in logs:
            logs.update(self._pop_training_metrics())
        for prefix in list(self._pending_eval_metrics):
            if f"{prefix}_runtime" in logs or f"{prefix}_loss" in logs:
                # In-place on purpose: `Trainer.evaluate` hands the same dict to the callbacks and returns it, so
                # robust metrics reach `on_evaluate` (early stopping) and best-checkpoint selection.
                logs.update(self._pending_eval_metrics.pop(prefix))
        super().log(logs, start_time)

    def _adversarial_callback_state(self) -> AdversarialTrainingCallback:
        # Looked up every time: Trainer may replace callbacks when restoring their state from a checkpoint.
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, AdversarialTrainingCallback):
                return callback
        return self._adversarial_callback

    # ------------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------------

    def evaluate(
        self,
        eval_dataset=None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """`Trainer.evaluate` plus robust accuracy under ``args.eval_attacks``.

        On the first ``args.eval_max_samples`` clips, each attack of ``args.eval_attacks`` runs with
        ``eval_attack_eps`` (default ``adv_eps``) and ``eval_attack_steps``; the metrics
        ``{prefix}_clean_accuracy``, ``{prefix}_robust_accuracy_<attack>``, ``{prefix}_worst_case_accuracy`` (clips no
        attack fools) and, for MoE models, ``{prefix}_routing_change_<attack>``, the routing-relevance controls
        (``{prefix}_random_routing_accuracy``, ``{prefix}_learned_minus_random_routing``,
        ``{prefix}_forced_expert_<i>_accuracy``) and the frozen-routing controls
        (``{prefix}_adv_input_clean_routing_<attack>``, ``{prefix}_clean_input_adv_routing_<attack>``) are logged with
        the clean ones, so
        ``metric_for_best_model="eval_worst_case_accuracy"`` selects the most robust checkpoint. The full
        [`~hf_videomoe.evaluation.RobustnessReport`] is kept in ``trainer.robustness_report``. Sharded over processes.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, Mapping) and not isinstance(eval_dataset, str):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # recurses per dataset
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        if ignore_keys is None:
            config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", [])) + _NON_PREDICTION_KEYS
        if self.args.eval_attacks and dataset is not None:
            self._pending_eval_metrics[metric_key_prefix] = self._robust_metrics(dataset, metric_key_prefix)
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._pending_eval_metrics.pop(metric_key_prefix, None)

    def _robust_metrics(self, dataset, prefix: str) -> dict[str, float]:
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        eps = args.adv_eps if args.eval_attack_eps is None else args.eval_attack_eps
        attacks = {
            name: {"name": name, **self.attack_kwargs(name, eps=eps, steps=args.eval_attack_steps, step_size=None)}
            for name in args.eval_attacks
        }
        start = time.time()
        report = evaluate_robustness(
            model,
            dataset,
            attacks,
            eps=eps,
            norm=args.adv_norm,
            steps=args.eval_attack_steps,
            seed=args.seed,
            batch_size=args.per_device_eval_batch_size,
            max_samples=args.eval_max_samples,
            diagnostics=self.is_moe,
            compute_cost=False,
            check_determinism=False,
            check_gradients=False,
            accelerator=self.accelerator if self.accelerator.num_processes > 1 else None,
            progress=False,
        )
        self.robustness_reports[prefix] = report
        if prefix == "eval" or self.robustness_report is None:
            self.robustness_report = report
        metrics = {f"{prefix}_clean_accuracy": report.clean_accuracy, f"{prefix}_robust_runtime": time.time() - start}
        for name, value in report.robust_accuracy.items():
            metrics[f"{prefix}_{ROBUST_METRIC_PREFIX}{name}"] = value
        metrics[f"{prefix}_{WORST_CASE_METRIC}"] = report.worst_case_accuracy
        for name, value in (report.routing_change or {}).items():
            metrics[f"{prefix}_routing_change_{name}"] = value
        relevance = report.routing_relevance
        if relevance:
            metrics[f"{prefix}_random_routing_accuracy"] = relevance["random"]
            metrics[f"{prefix}_learned_minus_random_routing"] = relevance["learned_minus_random"]
            for expert, value in enumerate(relevance["forced"]):
                metrics[f"{prefix}_forced_expert_{expert}_accuracy"] = value
        for name, controls in (report.frozen_routing or {}).items():
            for key, value in controls.items():
                metrics[f"{prefix}_{key}_{name}"] = value
        return {key: float(value) for key, value in metrics.items()}

    # ------------------------------------------------------------------------------------------------------------------
    # Model card and Hub
    # ------------------------------------------------------------------------------------------------------------------

    def training_recipe(self) -> dict[str, Any]:
        """The training settings that matter for robustness, for the model card (JSON-serialisable)."""
        args = self.args
        recipe: dict[str, Any] = {"method": self.method_label, "trainer": type(self).__name__}
        for key, value in args.adversarial_recipe().items():
            owner = {"jtlat": "j-tlat", "advmoe": "advmoe", "trades": "trades"}.get(key.split("_")[0])
            if owner is not None and owner != self.adv_method:
                continue  # settings of another method
            recipe[key] = value
        recipe["adv_method"] = self.adv_method
        recipe.update(
            learning_rate=args.learning_rate,
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            num_processes=self.accelerator.num_processes,
            optimizer_steps=self.state.global_step,
            seed=args.seed,
        )
        runtimes = [log["train_runtime"] for log in self.state.log_history if "train_runtime" in log]
        if runtimes:
            recipe["train_runtime_s"] = round(float(runtimes[-1]), 1)
        phase_updates = self._adversarial_callback_state().phase_updates
        if phase_updates:
            recipe["phase_updates"] = dict(phase_updates)
        return recipe

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write ``README.md`` (and ``report.json``) in ``output_dir``.

        With a robustness report (from `evaluate` with ``eval_attacks``), the card is
        [`~hf_videomoe.hub.build_model_card`]'s: ``model-index`` metrics with worst-case, clean and per-attack robust
        accuracy, the robustness table and this trainer's recipe ([`training_recipe`]). Without one, Trainer's
        default card, tagged with the adversarial-training method.
        """
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags = list(dict.fromkeys([*tags, "adversarial-training", self.adv_method]))
        if self.robustness_report is None:
            return super().create_model_card(
                language=language, license=license, tags=tags, model_name=model_name, finetuned_from=finetuned_from,
                tasks=tasks, dataset_tags=dataset_tags, dataset=dataset, dataset_args=dataset_args,
            )  # fmt: skip
        if not self.is_world_process_zero():
            return None
        card = build_model_card(
            self.robustness_report,
            model_name=model_name or Path(self.args.output_dir).name,
            base_model=finetuned_from,
            dataset_name=dataset if isinstance(dataset, str) else None,
            training_recipe=self.training_recipe(),
            license=license or "apache-2.0",
            tags=tags,
            repo_id=self.hub_model_id,
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))
        self.robustness_report.save(os.path.join(self.args.output_dir, "report.json"))
        return None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Upload the model with its robustness report and model card.

        With a robustness report (from `evaluate` with ``eval_attacks``), the checkpoint goes up in one commit through
        [`~hf_videomoe.hub.push_robust_checkpoint`]: weights, ``README.md`` with ``model-index`` robust-accuracy
        metrics and this trainer's recipe, ``report.json``, ``robustness_report.md`` and plots. The repo is
        ``repo_id`` (keyword), else ``args.hub_model_id``, else the name of ``output_dir``; ``endpoint`` selects another
        Hub-compatible server; other keyword arguments go to `build_model_card`. Uploads are blocking. Without a
        report, this is `Trainer.push_to_hub`.
        """
        if self.robustness_report is None:
            return super().push_to_hub(
                commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private,
                **kwargs,
            )  # fmt: skip
        args = self.args
        if not blocking:
            logger.warning("push_to_hub uploads robust checkpoints in one blocking commit; ignoring blocking=False.")
        self.callback_handler.on_push_begin(args, self.state, self.control)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        repo_id = kwargs.pop("repo_id", None) or self.hub_model_id or args.hub_model_id
        repo_id = repo_id or Path(args.output_dir).absolute().name
        return push_robust_checkpoint(
            self.model,
            repo_id,
            self.robustness_report,
            token=token if token is not None else args.hub_token,
            private=args.hub_private_repo if private is None else private,
            commit_message=None if commit_message == "End of training" else commit_message,
            revision=revision if revision is not None else args.hub_revision,
            model_name=kwargs.pop("model_name", None) or repo_id.split("/")[-1],
            training_recipe=kwargs.pop("training_recipe", None) or self.training_recipe(),
            **kwargs,
        )


def _forward_parameter_names(model: nn.Module) -> set[str]:
    """Named parameters of ``model.forward`` (extra dataset columns are not passed to the model)."""
    parameters = inspect.signature(model.forward).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _check_labelled(dataset, name: str) -> None:
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
