"""[`StepContext`]: what a [`TrainingMethod`] sees of one micro-batch — the batch, the forward pass, the adversarial
examples of an attack, the clean pass and the loss helpers — so that a method's loss needs nothing of the trainer.

The trainer builds one for every loss it asks a method for; everything it holds flows down from the trainer (the
arguments, the training attacks, the micro-batch's shared [`StepState`], its seed), and nothing in it calls back up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..attacks import attack_mode
from ..attacks.trades import trades_adversarial
from .losses import cross_entropy, with_aux_loss
from .phases import ForwardOutput, PhaseLoss, StepState, step_seed

if TYPE_CHECKING:  # pragma: no cover
    from .adversarial import TrainingAttacks
    from .arguments import AdversarialTrainingArguments
    from .callback import AdversarialTrainingCallback

__all__ = ["StepContext", "model_forward"]


def model_forward(model: nn.Module, pixel_values: torch.Tensor, is_moe: bool) -> ForwardOutput:
    """Run ``model`` (wrapped or not) on pixels; MoE models are asked for router logits and the aux loss."""
    kwargs = {"output_router_logits": True} if is_moe else {}
    out = model(pixel_values=pixel_values, **kwargs)
    if isinstance(out, torch.Tensor):
        return ForwardOutput(out, None, None)
    if isinstance(out, (tuple, list)):
        return ForwardOutput(out[0], None, None)
    router_logits = getattr(out, "router_logits", None)
    return ForwardOutput(out["logits"], tuple(router_logits) if router_logits else None, getattr(out, "aux_loss", None))


@dataclass
class StepContext:
    """One micro-batch of a training step, as a method's loss sees it.

    Attributes:
        args: the run's [`AdversarialTrainingArguments`].
        state: what the phases of the micro-batch share (the clean batch, its adversarial examples per attack, the
            clean pass); the context reads and fills its caches.
        attacks: the run's training attacks.
        is_moe: whether the model has MoE layers (its forward passes are then asked for router logits).
        config: the model's config (``num_experts``, ``num_experts_per_tok``).
        unwrap: returns the bare model under a (DDP-)wrapped one; attacks and passes without gradient run on it.
        seed_parts: ``(seed, global step, micro-batch, process)``: with an attack's name, its seed (see
            [`attack_seed`]).
        shares_clean_pass: whether the method's losses read [`clean_outputs`], which the attacks then reuse.
        callback: the run's bookkeeping (counts the adversarial batches generated).
    """

    args: AdversarialTrainingArguments
    state: StepState
    attacks: TrainingAttacks
    is_moe: bool
    config: Any
    unwrap: Callable[[nn.Module], nn.Module]
    seed_parts: tuple[int, ...]
    shares_clean_pass: bool
    callback: AdversarialTrainingCallback

    @property
    def pixel_values(self) -> torch.Tensor:
        return self.state.pixel_values

    @property
    def labels(self) -> torch.Tensor:
        return self.state.labels

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    @property
    def top_k(self) -> int:
        """Experts per token of the model (1 for dense models)."""
        return int(getattr(self.config, "num_experts_per_tok", 1))

    # ------------------------------------------------------------------------------------------------------------------
    # Forward passes and losses
    # ------------------------------------------------------------------------------------------------------------------

    def forward(self, model: nn.Module, pixel_values: torch.Tensor) -> ForwardOutput:
        """Logits, router logits and aux loss of ``model`` on ``pixel_values`` (see [`model_forward`])."""
        return model_forward(model, pixel_values, self.is_moe)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-clip cross-entropy, with the run's ``label_smoothing_factor``."""
        return cross_entropy(logits, labels, self.args.label_smoothing_factor)

    def with_aux_loss(self, loss: PhaseLoss, out: ForwardOutput) -> PhaseLoss:
        """``loss`` plus the MoE auxiliary loss of ``out`` (see [`~hf_videomoe.training.losses.with_aux_loss`])."""
        return with_aux_loss(loss, out, self.top_k)

    def clean_outputs(self, model: nn.Module) -> ForwardOutput:
        """Outputs on the clean clips of the micro-batch, without gradient: the targets of the Lipschitz terms and of
        the routing consistency when ``lipschitz_detach_clean`` is set. One eval-mode forward pass of the unwrapped
        model per micro-batch (a fixed target carries no dropout noise), shared by every phase and by the training
        attacks, which would otherwise each run the same clean pass (see ``shares_clean_pass``)."""
        state = self.state
        if state.clean is None:
            unwrapped = self.unwrap(model)
            with attack_mode(unwrapped, grad=False):
                state.clean = self.forward(unwrapped, state.pixel_values)
        return state.clean

    # ------------------------------------------------------------------------------------------------------------------
    # Adversarial examples
    # ------------------------------------------------------------------------------------------------------------------

    def attack_seed(self, slot: str) -> int:
        """Seed of an attack call: a function of ``args.seed``, the global step, the micro-batch, the process and
        ``slot``, so that a run resumed from a checkpoint generates exactly the same adversarial examples."""
        return step_seed(*self.seed_parts, slot)

    def adversarial_examples(self, model: nn.Module, attack: str | None) -> torch.Tensor:
        """Adversarial pixels of the micro-batch for ``attack`` (``None``: the clean pixels; ``"trades"``: TRADES' KL
        maximisation), generated once per step and shared by every phase that uses the same attack, on the unwrapped
        ``model`` with its current weights."""
        state = self.state
        if attack is None:
            return state.pixel_values
        if attack not in state.adversarial:
            unwrapped = self.unwrap(model)
            seed = self.attack_seed(attack)
            if attack == "trades":
                args = self.args
                adv = trades_adversarial(
                    unwrapped,
                    state.pixel_values,
                    eps=args.adv_eps,
                    steps=args.adv_steps,
                    step_size=args.adv_step_size,
                    norm=args.adv_norm,
                    seed=seed,
                    logits_fn=lambda m, x: self.forward(m, x).logits,
                )
            else:
                attack_obj = self.attacks.attack(attack)
                attack_obj.seed = seed
                clean = None
                if self.shares_clean_pass:
                    out = self.clean_outputs(model)
                    clean = (out.logits, out.router_logits)
                adv = attack_obj.perturb(unwrapped, state.pixel_values, state.labels, clean_outputs=clean)
            state.adversarial[attack] = adv.detach()
            self.callback.adversarial_batches += 1
        state.main_attack = attack
        return state.adversarial[attack]
