"""`JTLATTrainer`: Joint Temporal Lipschitz Adversarial Training (J-TLAT) of video Mixture-of-Experts.

J-TLAT's phases and single-pass losses are a [`TrainingMethod`] like every other method's (`tlat.JTLAT`,
`jtlat_routing`). What stays here changes how the trainer *runs* phases, which no loss can express: step 2 runs one
forward / backward pass per expert, and ``jtlat_update="sequential"`` steps the optimizer between phases (hence the
optimizer checks at set-up).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..attacks.terms import lipschitz_ratio
from ..moe import force_experts
from .jtlat_routing import expert_selection
from .phases import PhaseLoss, TrainingPhase
from .trainer import AdversarialTrainer

#: Optimizers with which `jtlat_update="sequential"` is exact: per-parameter state, parameters without a gradient
#: skipped (so an early update moves its own parameter group only).
SEQUENTIAL_UPDATE_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop", "adafactor")
SEQUENTIAL_UPDATE_OPTIMIZER_CLASSES = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.SGD,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
)


class JTLATTrainer(AdversarialTrainer):
    r"""[`AdversarialTrainer`] running the paper's J-TLAT: three steps on every batch, each on its own parameter group.

    1. **Router step** (``"router"``, router parameters only): on router-attack examples ``x_r`` (TLGA-R by default,
       ``jtlat_router_attack``), minimise ``ℓ_Router = CE(R(x_r), r(x)) + λ_R · L_Lip(R; x, x_r)`` — routing
       consistency with the clean top-1 decisions ``r(x)`` plus the router's Lipschitz ratio, averaged over MoE
       layers and routing units.
    2. **Expert step** (``"expert"``, expert parameters only): on the same ``x_r`` (or on TLA-E examples aimed at
       each clip's clean top-1 expert path, ``jtlat_expert_attack="tla-e"``), take for each clip the top-2
       experts 𝓘 of the clip-level router probabilities ``R(x_r)`` (`clip_router_probabilities`) and minimise
       ``Σ_{i∈𝓘} w_i [CE(E_i(x_r), y) + λ_E · L_Lip(E_i; x, x_r)]``, where ``E_i`` is the model with every MoE layer
       forced to expert ``i`` and ``w_i`` the two router probabilities renormalised to sum to 1 (detached).
    3. **Model step** (``"model"``, all parameters): on joint-attack examples ``x_m`` (J-TLGA by default,
       ``jtlat_model_attack``), minimise ``CE(F(x_m), y) + λ_F · L_Lip(F; x, x_m)`` plus the MoE auxiliary loss.

    Each λ is its own argument (``router_lipschitz_weight``, ``expert_lipschitz_weight``, ``lipschitz_weight``).

    By default (``jtlat_update="summed"``) all three steps use the weights at the start of the optimizer step: each
    back-propagates into its own group (``requires_grad`` toggling), gradients add up in ``.grad``, and one optimizer
    step applies the sum. This keeps Trainer's optimizer, scheduler, clipping and gradient-accumulation semantics; a
    router step therefore never moves an expert, and an expert step never moves a router. ``jtlat_update="sequential"``
    runs the paper's three updates in a row instead (see [`apply_sequential_update`] and docs/METHOD.md, "One
    optimizer step, not three"). ``jtlat_steps`` selects the steps, ``jtlat_reuse_adversarial=True`` generates a single
    adversarial batch (with ``jtlat_model_attack``) for all of them, and then (top-1 routing) steps 1 and 3 share one
    forward / backward pass (see [`fuses_router_and_model_steps`]).

    Logged components: ``loss_router`` (``router_ce``, ``lipschitz_router``), ``loss_expert`` (``expert_ce``,
    ``lipschitz_expert``, both already weighted by ``w_i``), ``loss_model`` (``adv_ce``, ``lipschitz_model``,
    ``aux_loss``, ``clean_ce``), ``expert_usage_entropy`` and, on logging steps, ``routing_change``,
    ``clean_accuracy`` and ``adv_accuracy`` of the training batch.

    Example:

    ```python
    >>> from hf_videomoe.training import AdversarialTrainingArguments, JTLATTrainer
    >>> args = AdversarialTrainingArguments(output_dir="out", adv_steps=5, lipschitz_weight=1e-5, eval_attacks=["pgd"])
    >>> trainer = JTLATTrainer(model=moe_model, args=args, train_dataset=ds["train"], eval_dataset=ds["test"])
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    default_adv_method: ClassVar[str] = "j-tlat"
    supported_adv_methods: ClassVar[tuple[str, ...]] = ("j-tlat",)

    def _check_method_supported(self) -> None:
        if self.adv_method not in self.supported_adv_methods:
            raise ValueError(
                f"JTLATTrainer trains J-TLAT only, got adv_method={self.adv_method!r}; leave it unset (or 'j-tlat'), "
                "or use AdversarialTrainer for the other methods."
            )

    def _setup_adversarial_training(self) -> None:
        super()._setup_adversarial_training()
        num_experts = self.accelerator.unwrap_model(self.model).config.num_experts
        if self.args.jtlat_top_k > num_experts:
            raise ValueError(f"jtlat_top_k={self.args.jtlat_top_k} exceeds the model's {num_experts} experts.")
        if self.args.jtlat_steps == ["router"] and self.accelerator.num_processes > 1:
            # The router step reads only router inputs, from the unwrapped model: alone it has no DDP pass, so the
            # processes' router gradients would never be averaged.
            raise ValueError(
                "jtlat_steps=['router'] runs no pass through DistributedDataParallel, so gradients would not be "
                "synchronised across processes; add the 'expert' or 'model' step, or train on one process."
            )
        if self.args.jtlat_update == "sequential":
            self._check_sequential_update()

    def _check_sequential_update(self) -> None:
        # Three optimizer steps per training step are only well defined on one full batch seen by one process: with
        # accumulation the early steps would update on one micro-batch, and DDP would have to synchronise each step's
        # gradient of a parameter subset on its own.
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError(
                "jtlat_update='sequential' needs gradient_accumulation_steps=1, got "
                f"{self.args.gradient_accumulation_steps}; use jtlat_update='summed' to accumulate."
            )
        if self.accelerator.num_processes != 1:
            raise ValueError(
                f"jtlat_update='sequential' runs on one process, got {self.accelerator.num_processes}; use "
                "jtlat_update='summed' (the default) for distributed training."
            )
        # The early updates must move only their own group: true of optimizers whose state is per parameter and which
        # skip a parameter without a gradient; not of schedule-free or layer-wise optimizers (state or update tied to
        # the whole group / the backward pass) or of LOMO (no `step`).
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            cls = type(self.optimizer) if self.optimizer is not None else self.optimizer_cls_and_kwargs[0]
            if not issubclass(cls, SEQUENTIAL_UPDATE_OPTIMIZER_CLASSES):
                names = [c.__name__ for c in SEQUENTIAL_UPDATE_OPTIMIZER_CLASSES]
                raise ValueError(
                    f"jtlat_update='sequential' supports the custom optimizers {names}, got {cls.__name__}; use "
                    "jtlat_update='summed'."
                )
        else:
            optim = getattr(self.args.optim, "value", self.args.optim)
            if optim not in SEQUENTIAL_UPDATE_OPTIMIZERS:
                raise ValueError(
                    f"jtlat_update='sequential' supports optim in {list(SEQUENTIAL_UPDATE_OPTIMIZERS)}, got "
                    f"{optim!r}; use jtlat_update='summed' for other optimizers."
                )

    def training_phases(self) -> list[TrainingPhase]:
        return self.method.phases(self.args, self.state.global_step, fused=self.fuses_router_and_model_steps)

    @property
    def fuses_router_and_model_steps(self) -> bool:
        """Whether steps 1 and 3 share one forward / backward pass (``jtlat_reuse_adversarial``, top-1 routing,
        summed updates; see [`~hf_videomoe.training.tlat.JTLAT.fuses_router_and_model_steps`])."""
        return self.method.fuses_router_and_model_steps(self.args, self.top_k())

    def expert_selection(self, model: nn.Module, phase: TrainingPhase) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2's experts per clip and their weights (see
        [`~hf_videomoe.training.jtlat_routing.expert_selection`])."""
        return expert_selection(self.step_context(), model, phase)

    # ------------------------------------------------------------------------------------------------------------------
    # Step 2: one forced-expert pass per expert
    # ------------------------------------------------------------------------------------------------------------------

    def train_phase(self, model: nn.Module, phase: TrainingPhase, final: bool) -> torch.Tensor:
        if phase.name == "expert":
            loss = self.train_expert_step(model, phase, final)
        else:
            loss = super().train_phase(model, phase, final)
        if self.args.jtlat_update == "sequential" and not final:
            self.apply_sequential_update(phase)
        return loss

    def apply_sequential_update(self, phase: TrainingPhase) -> None:
        """``jtlat_update="sequential"``: apply ``phase``'s gradient now, so the next J-TLAT step sees the updated
        weights (the last step's gradient is left to Trainer's own optimizer step).

        Only ``phase``'s parameter group holds a gradient here (the others did not require one during its backward
        pass), and the supported optimizers skip parameters without a gradient, so the update moves that group
        alone. The group's gradient is clipped to ``max_grad_norm`` as Trainer clips (its norm is logged as
        ``grad_norm_router`` / ``grad_norm_expert``); the learning-rate scheduler is not stepped (it counts training
        steps). What later phases of the step would reuse is dropped where it depends on the weights: the clean
        outputs (Lipschitz targets), the adversarial router logits (step 2's expert choice) and, once no later step
        is step 2 (which trains on step 1's ``x_r``, as in the paper), the adversarial examples. If a later step
        raises (NaN guard), the weights and optimizer state already hold this update.
        """
        groups = self.parameter_groups
        group = groups.parameters(phase.parameters)
        for param in self.model.parameters():
            if param.grad is None or groups.selects(phase.parameters, param):
                continue
            if param.grad.any():  # gradient accumulation and several processes are refused: this cannot happen
                raise RuntimeError(f"{phase.label}: a parameter outside its group holds a gradient before its update.")
            param.grad = None  # a zero gradient would still move the parameter (momentum, weight decay)
        if any(param.grad is not None for param in group):
            if self.args.max_grad_norm:
                norm = self.accelerator.clip_grad_norm_(group, self.args.max_grad_norm)
                self._accumulate(f"grad_norm_{phase.name}", norm)
            self.optimizer.step()
            for param in group:
                param.grad = None
        step = self.step_state
        step.clean = None
        step.adv_router_logits.clear()
        if phase.name == "expert" or "expert" not in self.args.jtlat_steps:
            step.adversarial.clear()

    def train_expert_step(self, model: nn.Module, phase: TrainingPhase, final: bool) -> torch.Tensor:
        """J-TLAT step 2. Clips are grouped by selected expert; each expert ``e`` runs one forced forward / backward
        pass on its adversarial clips (after a forced forward without gradient on their clean versions for the
        Lipschitz target, or on ``[clean, adversarial]`` when ``lipschitz_detach_clean=False``), weighted by ``w_e``,
        into expert parameters only.

        Under several processes the last expert's pass is the micro-batch's synchronising pass when step 2 is the
        last step; a process with no clip for that expert then runs it on one clip with weight 0 (processes must run
        the same DDP passes).
        """
        step = self.step_context()
        x, y, batch_size = step.pixel_values, step.labels, step.batch_size
        x_adv = step.adversarial_examples(model, phase.attack)
        indices, weights = self.expert_selection(model, phase)
        unwrapped = step.unwrap(model)
        num_experts = unwrapped.config.num_experts
        lipschitz_weight = self.args.expert_lipschitz_weight
        num_items = step.state.num_items_in_batch
        distributed = self.accelerator.num_processes > 1

        per_clip = x.new_zeros(batch_size, dtype=torch.float32)
        ce_per_clip = torch.zeros_like(per_clip)
        lip_per_clip = torch.zeros_like(per_clip)
        expert_ces, expert_lips = [], []
        total = torch.zeros((), device=self.args.device)
        for expert in range(num_experts):
            chosen = indices == expert
            clip_index = chosen.any(dim=-1).nonzero().squeeze(1)
            clip_weight = (weights * chosen).sum(dim=-1)
            last = final and expert == num_experts - 1
            if clip_index.numel() == 0:
                if not (last and distributed):
                    continue
                clip_index = torch.zeros(1, dtype=torch.long, device=x.device)  # weight 0: a pass that adds nothing
            w = clip_weight[clip_index]
            xs, xa, ys = x[clip_index], x_adv[clip_index], y[clip_index]
            with self.parameter_groups.only("expert"), force_experts(unwrapped, expert):
                with self.compute_loss_context_manager():
                    pass_model = self.pass_model(model, last)
                    if lipschitz_weight and self.args.lipschitz_detach_clean:
                        with torch.no_grad():
                            clean_logits = step.forward(unwrapped, xs).logits
                        adv_logits = step.forward(pass_model, xa).logits
                        lip = lipschitz_ratio(clean_logits, adv_logits, xs, xa)
                    elif lipschitz_weight:
                        out = step.forward(pass_model, torch.cat([xs, xa]))
                        clean_logits, adv_logits = out.logits.split(clip_index.numel())
                        lip = lipschitz_ratio(clean_logits, adv_logits, xs, xa)
                    else:
                        adv_logits, lip = step.forward(pass_model, xa).logits, torch.zeros_like(w)
                    ce = step.task_loss(adv_logits, ys)
                    per_sample = w * (ce + lipschitz_weight * lip)
                    loss = self._reduce(per_sample, num_items, batch_size)
                total = total + self._backward(loss, num_items)
            per_clip.index_add_(0, clip_index, per_sample.detach())
            ce_per_clip.index_add_(0, clip_index, (w * ce).detach())
            lip_per_clip.index_add_(0, clip_index, (w * lip).detach())
            expert_ces.append(ce.detach())
            expert_lips.append(lip.detach())

        terms = {"expert_ce": ce_per_clip}
        if lipschitz_weight:
            terms["lipschitz_expert"] = lip_per_clip
        self._record_phase(phase, PhaseLoss(per_clip, terms))
        # The NaN guard looks at the raw values of every pass (a clip's weighted sum could hide nothing, but a pass
        # with weight 0 must still be checked); the term names are the same on every process.
        raw = {"expert_ce": expert_ces, "lipschitz_expert": expert_lips}
        self._raise_if_not_finite(
            phase, {name: torch.cat(values) if values else per_clip.new_zeros(0) for name, values in raw.items()}
        )
        return total
