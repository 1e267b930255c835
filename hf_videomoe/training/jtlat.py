"""`JTLATTrainer`: Joint Temporal Lipschitz Adversarial Training (J-TLAT) of video Mixture-of-Experts."""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.terms import lipschitz_ratio, router_consistency_ce, router_lipschitz_ratio
from ..moe import (
    clip_router_probabilities,
    force_experts,
    load_balancing_loss,
    moe_blocks,
    router_logits_only,
    sharpened_balance_loss,
)
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
            # Three optimizer steps per training step are only well defined on one full batch seen by one process:
            # with accumulation the early steps would update on one micro-batch, and DDP would have to synchronise
            # each step's gradient of a parameter subset on its own.
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
            # The early updates must move only their own group: true of optimizers whose state is per parameter and
            # which skip a parameter without a gradient; not of schedule-free or layer-wise optimizers (state or
            # update tied to the whole group / the backward pass) or of LOMO (no `step`).
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
        args = self.args
        router_attack = args.jtlat_model_attack if args.jtlat_reuse_adversarial else args.jtlat_router_attack
        expert_attack = args.jtlat_expert_attack or router_attack
        phases = {
            "router": TrainingPhase("router", "J-TLAT step 1 (router)", "router", router_attack),
            "expert": TrainingPhase("expert", "J-TLAT step 2 (expert)", "expert", expert_attack),
            "model": TrainingPhase("model", "J-TLAT step 3 (model)", "all", args.jtlat_model_attack),
        }
        if self.fuses_router_and_model_steps:
            fused = TrainingPhase("router+model", "J-TLAT steps 1+3 (router, model)", "all", args.jtlat_model_attack)
            return [fused] + ([phases["expert"]] if "expert" in args.jtlat_steps else [])
        return [phases[name] for name in args.jtlat_steps]

    @property
    def fuses_router_and_model_steps(self) -> bool:
        """Whether steps 1 and 3 share one forward / backward pass.

        When both run on the same adversarial clips (``jtlat_reuse_adversarial``) and routing is top-1, step 1's
        router-only gradient is the gradient of ``ℓ_Router`` computed from router logits recomputed on *detached*
        router inputs (see [`router_loss`]). Step 3's forward pass then serves both losses and one backward pass
        applies ``∇ℓ_model`` to all parameters and ``∇ℓ_Router`` to the routers only — the same update as two passes,
        for one pass less.
        """
        args = self.args
        top_1 = getattr(self.accelerator.unwrap_model(self.model).config, "num_experts_per_tok", 1) == 1
        return (
            args.jtlat_reuse_adversarial
            and args.jtlat_update == "summed"
            and top_1
            and {"router", "model"} <= set(args.jtlat_steps)
        )

    # ------------------------------------------------------------------------------------------------------------------
    # Step 1 and step 3: one forward pass each
    # ------------------------------------------------------------------------------------------------------------------

    def compute_phase_loss(self, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
        if phase.name == "router":
            return self.router_loss(model, phase)
        if phase.name == "model":
            step = self.step_state
            x_adv = self.adversarial_examples(model, phase.attack)
            return self.lipschitz_model_loss(model, step.pixel_values, x_adv, step.labels)
        if phase.name == "router+model":
            return self.fused_router_model_loss(model, phase)
        raise ValueError(f"{phase.label} runs one pass per expert in `train_phase`; it has no single-pass loss.")

    def fused_router_model_loss(self, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
        """Steps 1 and 3 from step 3's forward pass (see [`fuses_router_and_model_steps`]): the router inputs of
        that pass are captured and the router logits recomputed from them detached, so ``ℓ_Router``'s gradient
        reaches the router weights only."""
        step = self.step_state
        x, y = step.pixel_values, step.labels
        x_adv = self.adversarial_examples(model, phase.attack)
        with _captured_router_inputs(self.accelerator.unwrap_model(model)) as router_logits_of:
            model_loss = self.lipschitz_model_loss(model, x, x_adv, y)
        batch = step.batch_size
        adv_rl = router_logits_of(slice(-batch, None))
        if self.args.lipschitz_detach_clean or not self.args.lipschitz_weight:
            clean_rl = router_logits_of.own_layers(self.clean_outputs(model).router_logits)
        else:  # the model step forwarded [x, x_adv]: the clean router logits get their own (detached-input) gradient
            clean_rl = router_logits_of(slice(None, batch))
        router_loss = self._router_objective(clean_rl, adv_rl, x, x_adv)
        step.adv_router_logits[phase.attack] = tuple(r.detach() for r in adv_rl)
        terms = {
            "loss_router": router_loss.per_sample,
            **router_loss.terms,
            "loss_model": model_loss.per_sample,
            **model_loss.terms,
        }
        return PhaseLoss(router_loss.per_sample + model_loss.per_sample, terms, model_loss.logits)

    def router_loss(self, model: nn.Module, phase: TrainingPhase) -> PhaseLoss:
        """``CE(R(x_r), r(x)) + λ · L_Lip(R; x, x_r)`` per clip: one forward pass on ``x_r`` with the clean router
        logits from the shared clean pass (``lipschitz_detach_clean``), else one on ``[x, x_r]``.

        Each router's logits are recomputed from its *detached* inputs: step 1 trains every router to keep its own
        decisions, and ``ℓ_Router`` of one layer does not reach the routers of earlier layers through the gate's
        straight-through gradient (a surrogate, not a change of the forward value). This is also what lets steps 1 and
        3 share a pass exactly (see [`fuses_router_and_model_steps`])."""
        step = self.step_state
        x = step.pixel_values
        x_adv = self.adversarial_examples(model, phase.attack)
        unwrapped = self.accelerator.unwrap_model(model)

        def route(pixel_values):  # only the routers' inputs are read: no graph, and nothing after the last router
            with torch.no_grad():
                router_logits_only(unwrapped, lambda: self.model_forward(unwrapped, pixel_values))

        with _captured_router_inputs(unwrapped) as router_logits_of:
            if self.args.lipschitz_detach_clean:
                clean_rl = router_logits_of.own_layers(self.clean_outputs(model).router_logits)
                route(x_adv)
                adv_rl = router_logits_of(slice(None))
            else:
                route(torch.cat([x, x_adv]))
                clean_rl = router_logits_of(slice(None, step.batch_size))
                adv_rl = router_logits_of(slice(step.batch_size, None))
        # Step 2 picks each clip's experts from these adversarial router probabilities (before step 1's update unless
        # the update is sequential, which drops them: see `apply_sequential_update`).
        step.adv_router_logits[phase.attack] = tuple(r.detach() for r in adv_rl)
        return self._router_objective(clean_rl, adv_rl, x, x_adv)

    def _router_objective(self, clean_rl, adv_rl, x: torch.Tensor, x_adv: torch.Tensor) -> PhaseLoss:
        consistency = router_consistency_ce(adv_rl, clean_rl, soft_targets=self.args.jtlat_router_target == "soft")
        terms = {"router_ce": consistency}
        per_sample = consistency
        if self.args.router_lipschitz_weight:
            lip = router_lipschitz_ratio(clean_rl, adv_rl, x, x_adv)
            terms["lipschitz_router"] = lip
            per_sample = consistency + self.args.router_lipschitz_weight * lip
        if self.args.jtlat_router_balance_weight:
            # Counterweight to the self-reinforcing consistency CE, which otherwise collapses routing (METHOD.md §3).
            config = self.accelerator.unwrap_model(self.model).config
            if self.args.jtlat_router_balance == "sharp":
                balance = sharpened_balance_loss(adv_rl, config.num_experts, self.args.jtlat_router_balance_temperature)
            else:
                balance = load_balancing_loss(adv_rl, config.num_experts, config.num_experts_per_tok)
            terms["router_balance"] = balance
            per_sample = per_sample + self.args.jtlat_router_balance_weight * balance
        return PhaseLoss(per_sample, terms, None)

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

    def expert_selection(self, model: nn.Module, phase: TrainingPhase) -> tuple[torch.Tensor, torch.Tensor]:
        """Each clip's experts for step 2 and their weights: the ``jtlat_top_k`` largest clip-level router
        probabilities on the adversarial clip, renormalised to sum to 1. Returns ``(indices, weights)``, both
        ``(batch, k)``, detached."""
        step = self.step_state
        adv_rl = step.adv_router_logits.get(phase.attack)
        if adv_rl is None:  # no router step this batch: route the adversarial clips once, without gradient
            x_adv = self.adversarial_examples(model, phase.attack)
            unwrapped = self.accelerator.unwrap_model(model)
            with torch.no_grad():
                adv_rl = router_logits_only(unwrapped, lambda: self.model_forward(unwrapped, x_adv))
        probs = clip_router_probabilities(adv_rl).detach()
        top_p, top_i = probs.topk(min(self.args.jtlat_top_k, probs.shape[-1]), dim=-1)
        return top_i, top_p / top_p.sum(dim=-1, keepdim=True).clamp_min(1e-12)

    def train_expert_step(self, model: nn.Module, phase: TrainingPhase, final: bool) -> torch.Tensor:
        """J-TLAT step 2. Clips are grouped by selected expert; each expert ``e`` runs one forced forward / backward
        pass on its adversarial clips (after a forced forward without gradient on their clean versions for the
        Lipschitz target, or on ``[clean, adversarial]`` when ``lipschitz_detach_clean=False``), weighted by ``w_e``,
        into expert parameters only.

        Under several processes the last expert's pass is the micro-batch's synchronising pass when step 2 is the
        last step; a process with no clip for that expert then runs it on one clip with weight 0 (processes must run
        the same DDP passes).
        """
        step = self.step_state
        x, y, batch_size = step.pixel_values, step.labels, step.batch_size
        x_adv = self.adversarial_examples(model, phase.attack)
        indices, weights = self.expert_selection(model, phase)
        unwrapped = self.accelerator.unwrap_model(model)
        num_experts = unwrapped.config.num_experts
        lipschitz_weight = self.args.expert_lipschitz_weight
        num_items = step.num_items_in_batch
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
                            clean_logits = self.model_forward(unwrapped, xs).logits
                        adv_logits = self.model_forward(pass_model, xa).logits
                        lip = lipschitz_ratio(clean_logits, adv_logits, xs, xa)
                    elif lipschitz_weight:
                        out = self.model_forward(pass_model, torch.cat([xs, xa]))
                        clean_logits, adv_logits = out.logits.split(clip_index.numel())
                        lip = lipschitz_ratio(clean_logits, adv_logits, xs, xa)
                    else:
                        adv_logits, lip = self.model_forward(pass_model, xa).logits, torch.zeros_like(w)
                    ce = self.task_loss(adv_logits, ys)
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


@contextlib.contextmanager
def _captured_router_inputs(model: nn.Module):
    """Record the inputs of every router during the ``with`` block; yields ``router_logits_of(rows)``, which recomputes
    each router's float32 logits from its recorded (detached) inputs, restricted to batch ``rows`` (a slice).

    With model-level routing only the first MoE layer has a router; ``router_logits_of.own_layers(router_logits)``
    picks the matching entries of a model output's per-MoE-layer ``router_logits``."""
    blocks = moe_blocks(model)
    owners = [position for position, block in enumerate(blocks) if block.router is not None]
    routers = [blocks[position].router for position in owners]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        router.register_forward_pre_hook(lambda module, args, i=i: inputs.__setitem__(i, args[0]))
        for i, router in enumerate(routers)
    ]

    def router_logits_of(rows: slice) -> tuple[torch.Tensor, ...]:
        return tuple(
            F.linear(inputs[i][rows].detach().float(), router.weight.float()) for i, router in enumerate(routers)
        )

    router_logits_of.own_layers = lambda router_logits: tuple(router_logits[position] for position in owners)
    try:
        yield router_logits_of
    finally:
        for hook in hooks:
            hook.remove()
