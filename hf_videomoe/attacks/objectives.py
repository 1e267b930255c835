"""Attack objectives: per-sample losses that the attack engine *maximises*.

Every public function returns one value per sample, shape ``(batch,)``, so that the engine can track the best iterate
of each sample independently. The classification losses live here, the Lipschitz and router terms in
`hf_videomoe.attacks.terms` (re-exported here). The building blocks follow the paper (Wang et al., ICLR 2026, "Exposing and Defending
the Achilles' Heel of Video Mixture-of-Experts") and AutoAttack (Croce & Hein, ICML 2020):

- ``ce_loss`` / ``dlr_loss`` / ``dlr_targeted_loss`` / ``margin_loss`` on classifier logits;
- ``lipschitz_ratio``: L_Lip(g; x, delta) = MSE(g(x), g(x + delta)) / MSE(x, x + delta);
- ``router_lipschitz_ratio``: the same on router probabilities (all MoE layers, every routing unit);
- ``router_consistency_ce``: CE of the adversarial router against the clean top-1 decision of each unit;
- ``guidance_ce``: CE of the adversarial router toward a target expert (TLGA-R steers routing toward the weakest one);
- ``weakest_expert`` / ``dominant_expert``: the clip-level argmin / argmax of the clean router probabilities.

[`Objective`] combines them into the weighted sums of the named attacks, computes everything that only depends on the
clean input *once* per attack call ([`Objective.prepare`]) and evaluates the adversarial part with a single forward
pass per step (or one forward per distinct expert for the expert component E_i).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..moe import force_experts, is_moe_model, router_logits_only
from .model_guard import model_outputs
from .terms import (
    LIPSCHITZ_EPS,
    check_router_logits,
    dominant_expert,
    guidance_ce,
    lipschitz_ratio,
    per_sample_mse,
    router_consistency_ce,
    router_lipschitz_ratio,
    stack_router_layers,
    weakest_expert,
)

LIPSCHITZ_DENOMINATORS = ("gradient", "fixed")
"""How the attacks differentiate that denominator: through it (the paper's formula) or not (``"fixed"``)."""

CLASSIFICATION_LOSSES = ("ce", "dlr")
COMPONENTS = ("model", "expert")

__all__ = [
    "CLASSIFICATION_LOSSES",
    "LIPSCHITZ_DENOMINATORS",
    "LIPSCHITZ_EPS",
    "Objective",
    "ObjectiveContext",
    "ObjectiveOutput",
    "ce_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "dominant_expert",
    "guidance_ce",
    "lipschitz_ratio",
    "margin_loss",
    "model_outputs",
    "per_sample_mse",
    "router_consistency_ce",
    "router_lipschitz_ratio",
    "weakest_expert",
]


# ----------------------------------------------------------------------------------------------------------------------
# Classification losses
# ----------------------------------------------------------------------------------------------------------------------


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``CE(logits, labels)``, shape ``(batch,)``, computed in float32."""
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def _check_dlr_classes(logits: torch.Tensor, needed: int, what: str) -> None:
    if logits.shape[-1] < needed:
        raise ValueError(
            f"{what} needs at least {needed} classes (it uses the {needed}-th largest logit), "
            f"got logits with {logits.shape[-1]} classes. Use the CE loss instead."
        )


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted Difference-of-Logits-Ratio loss of Croce & Hein (2020), shape ``(batch,)``.

    ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``pi`` sorting the logits in decreasing order.
    It is invariant to shifting and rescaling the logits, and positive exactly when the sample is misclassified.
    Needs at least 3 classes.
    """
    _check_dlr_classes(logits, 3, "The DLR loss")
    z = logits.float()
    sorted_z, _ = z.sort(dim=-1, descending=True)
    z_y = z.gather(-1, labels.long()[:, None]).squeeze(-1)
    is_top = sorted_z[:, 0] == z_y
    other_max = torch.where(is_top, sorted_z[:, 1], sorted_z[:, 0])
    return -(z_y - other_max) / (sorted_z[:, 0] - sorted_z[:, 2] + LIPSCHITZ_EPS)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss of Croce & Hein (2020): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, shape ``(batch,)``.

    Maximising it pushes the target logit ``z_t`` above the true one ``z_y``. Needs at least 4 classes.
    """
    _check_dlr_classes(logits, 4, "The targeted DLR loss")
    z = logits.float()
    sorted_z, _ = z.sort(dim=-1, descending=True)
    z_y = z.gather(-1, labels.long()[:, None]).squeeze(-1)
    z_t = z.gather(-1, target_labels.long()[:, None]).squeeze(-1)
    return -(z_y - z_t) / (sorted_z[:, 0] - 0.5 * (sorted_z[:, 2] + sorted_z[:, 3]) + LIPSCHITZ_EPS)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Margin ``z_y - max_{i != y} z_i`` (untargeted) or ``max_{i != t} z_i - z_t`` (targeted, ``labels`` = targets).

    Square Attack *minimises* it; it is <= 0 once the attack has succeeded. Shape ``(batch,)``.
    """
    z = logits.float()
    index = labels.long()[:, None]
    z_y = z.gather(-1, index).squeeze(-1)
    others = z.scatter(-1, index, float("-inf")).amax(dim=-1)
    return others - z_y if targeted else z_y - others


def _select(value, index: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    if isinstance(value, (tuple, list)):
        return tuple(_select(v, index) for v in value)
    return value


@dataclass
class ObjectiveContext:
    """Everything an objective needs besides the adversarial input, computed once per attack call.

    All tensors have the batch as first dimension; [`select`](ObjectiveContext.select) restricts them to a subset of
    samples (the engine only forwards samples that are still being attacked).
    """

    x: torch.Tensor
    labels: torch.Tensor | None = None
    target_labels: torch.Tensor | None = None
    clean_logits: torch.Tensor | None = None
    clean_router_logits: tuple[torch.Tensor, ...] | None = None
    expert: torch.Tensor | None = None
    clean_expert_logits: torch.Tensor | None = None
    guidance_target: torch.Tensor | None = None
    clean_router_probs: torch.Tensor | None = None
    clean_router_top1: torch.Tensor | None = None
    moe: bool = False

    def select(self, index: torch.Tensor) -> "ObjectiveContext":
        """The context of the samples ``index`` (a 1-D long tensor)."""
        return replace(self, **{f.name: _select(getattr(self, f.name), index) for f in fields(self)})


@dataclass
class ObjectiveOutput:
    """Per-sample objective ``value`` (``(batch,)``, to maximise) and the ``logits`` the success test looks at (the
    whole model's, or expert E_i's for the expert component)."""

    value: torch.Tensor
    logits: torch.Tensor | None


class Objective:
    """A weighted sum of the building blocks above, evaluated with one forward pass per step.

    ``value = s * L(g(x+delta), y) + lipschitz_weight * L_Lip(g) + router_ce_weight * router_consistency_ce
    + router_lipschitz_weight * router_lipschitz_ratio - guidance_weight * guidance_ce(weakest expert)``

    where ``g`` is the whole model F (``component="model"``) or the clean top-1 expert E_i (``component="expert"``,
    routing forced with [`~hf_videomoe.moe.force_experts`]; samples are grouped by expert and each group runs one
    forced forward), ``L`` is ``loss`` (``"ce"``, ``"dlr"`` or ``None``) and ``s`` is +1 (untargeted, toward the
    labels) or -1 for targeted CE (toward ``target_labels``; targeted DLR uses its own formula). Router terms read the
    router logits of the same forward pass.

    Args:
        loss: classification loss on ``g``'s logits, or ``None`` for router-only objectives.
        lipschitz_weight: λ, weight of ``lipschitz_ratio`` on ``g``'s logits.
        router_ce_weight: weight of ``router_consistency_ce``.
        router_lipschitz_weight: weight of ``router_lipschitz_ratio``.
        guidance_weight: weight of the (subtracted) ``guidance_ce`` toward the weakest clean expert.
        component: ``"model"`` or ``"expert"``.
        targeted: targeted classification loss.
        lipschitz_denominator: ``"gradient"`` (the paper's ratio: the gradient also flows through ``MSE(x, x+δ)``,
            which rewards *shrinking* the perturbation) or ``"fixed"`` (the denominator is detached: only the output
            change is pushed; the ratio's value is the same).
    """

    def __init__(
        self,
        *,
        loss: str | None = "ce",
        lipschitz_weight: float = 0.0,
        router_ce_weight: float = 0.0,
        router_lipschitz_weight: float = 0.0,
        guidance_weight: float = 0.0,
        component: str = "model",
        targeted: bool = False,
        lipschitz_denominator: str = "gradient",
    ):
        if loss is not None and loss not in CLASSIFICATION_LOSSES:
            raise ValueError(f"`loss` must be one of {CLASSIFICATION_LOSSES} or None, got {loss!r}.")
        if component not in COMPONENTS:
            raise ValueError(f"`component` must be one of {COMPONENTS}, got {component!r}.")
        self.loss = loss
        self.lipschitz_weight = float(lipschitz_weight)
        self.router_ce_weight = float(router_ce_weight)
        self.router_lipschitz_weight = float(router_lipschitz_weight)
        self.guidance_weight = float(guidance_weight)
        self.component = component
        self.targeted = bool(targeted)
        if lipschitz_denominator not in LIPSCHITZ_DENOMINATORS:
            raise ValueError(
                f"`lipschitz_denominator` must be one of {LIPSCHITZ_DENOMINATORS}, got {lipschitz_denominator!r}."
            )
        self.lipschitz_denominator = lipschitz_denominator
        if loss is None and not self.uses_router:
            raise ValueError("An objective needs a classification loss or a router term.")

    @property
    def uses_router(self) -> bool:
        """Whether any term reads router logits."""
        return bool(self.router_ce_weight or self.router_lipschitz_weight or self.guidance_weight)

    @property
    def routers_only(self) -> bool:
        """Whether only router logits are read (no classification loss, no Lipschitz term on the model's logits):
        then a pass stops after the last router (see `hf_videomoe.moe.router_logits_only`) and returns no logits."""
        return self.loss is None and not self.lipschitz_weight and self.component == "model"

    @property
    def requires_moe(self) -> bool:
        """Whether the objective only makes sense on a Mixture-of-Experts model."""
        return self.uses_router or self.component == "expert"

    @property
    def requires_labels(self) -> bool:
        """Whether labels are needed (a classification loss is part of the objective)."""
        return self.loss is not None

    def prepare(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        target_labels: torch.Tensor | None = None,
        clean_outputs: tuple[torch.Tensor, Sequence[torch.Tensor] | None] | None = None,
    ) -> ObjectiveContext:
        """Compute the clean quantities once (no gradient): clean logits and router logits where a term needs them,
        the clean top-1 expert and E_i's clean logits for the expert component, the guidance target.
        ``clean_outputs``: the model's ``(logits, router_logits)`` on ``x`` if already computed (skips that forward)."""
        ctx = ObjectiveContext(x=x, labels=labels, target_labels=target_labels, moe=is_moe_model(model))
        needs_clean_model = (
            self.uses_router
            or self.component == "expert"
            or (self.component == "model" and self.lipschitz_weight != 0.0)
        )
        if not needs_clean_model:
            return ctx
        with torch.no_grad():
            if clean_outputs is None or (ctx.moe and clean_outputs[1] is None):
                logits, router_logits = model_outputs(model, x, router=True, moe=ctx.moe)
            else:
                logits, router_logits = clean_outputs
            if self.requires_moe:
                router_logits = check_router_logits(router_logits, "This objective")
                ctx.clean_router_logits = tuple(r.detach() for r in router_logits)
            ctx.clean_logits = logits.detach()
            if self.uses_router:
                stacked = stack_router_layers(ctx.clean_router_logits)
                ctx.clean_router_top1 = stacked.argmax(dim=-1)  # (B, L, U)
                ctx.clean_router_probs = stacked.softmax(dim=-1)  # (B, L, U, E)
            if self.guidance_weight:
                ctx.guidance_target = weakest_expert(ctx.clean_router_logits)
            if self.component == "expert":
                ctx.expert = dominant_expert(ctx.clean_router_logits)
                if self.lipschitz_weight != 0.0:
                    ctx.clean_expert_logits = self._expert_forward(model, x, ctx.expert)[0].detach()
        return ctx

    @staticmethod
    def _expert_forward(model: nn.Module, x: torch.Tensor, expert: torch.Tensor):
        """E_i(x) with a per-sample expert: one forced forward per distinct expert in the batch, then gathered."""
        experts = expert.tolist()
        distinct = sorted(set(experts))
        if len(distinct) == 1:
            with force_experts(model, distinct[0]):
                return model_outputs(model, x, router=True, moe=True)
        order, logits_parts, router_parts = [], [], []
        for e in distinct:
            index = torch.tensor([i for i, v in enumerate(experts) if v == e], device=x.device)
            with force_experts(model, e):
                logits, router_logits = model_outputs(model, x.index_select(0, index), router=True, moe=True)
            order.append(index)
            logits_parts.append(logits)
            router_parts.append(router_logits)
        inverse = torch.argsort(torch.cat(order))

        def gather(parts):
            stacked = torch.cat(parts)
            return stacked.index_select(0, inverse.to(stacked.device))

        logits = gather(logits_parts)
        router_logits = tuple(gather([parts[layer] for parts in router_parts]) for layer in range(len(router_parts[0])))
        return logits, router_logits

    def __call__(self, model: nn.Module, adv_x: torch.Tensor, ctx: ObjectiveContext) -> ObjectiveOutput:
        """Evaluate the objective on ``adv_x`` (gradients flow to ``adv_x`` when it requires grad)."""
        if self.component == "expert":
            logits, router_logits = self._expert_forward(model, adv_x, ctx.expert)
            clean_logits = ctx.clean_expert_logits
        elif self.routers_only and ctx.moe:
            # Nothing after the last router is read: the forward (and its backward) stop there, same values.
            logits, clean_logits = None, None
            router_logits = router_logits_only(model, lambda: model(adv_x, output_router_logits=True))
        else:
            logits, router_logits = model_outputs(model, adv_x, router=self.uses_router, moe=ctx.moe)
            clean_logits = ctx.clean_logits
        value = adv_x.new_zeros(adv_x.shape[0], dtype=torch.float32)
        if self.loss == "ce":
            if self.targeted:
                value = value - ce_loss(logits, ctx.target_labels)
            else:
                value = value + ce_loss(logits, ctx.labels)
        elif self.loss == "dlr":
            if self.targeted:
                value = value + dlr_targeted_loss(logits, ctx.labels, ctx.target_labels)
            else:
                value = value + dlr_loss(logits, ctx.labels)
        denominator = None
        if self.lipschitz_weight or self.router_lipschitz_weight:
            denominator = per_sample_mse(ctx.x, adv_x) + LIPSCHITZ_EPS  # shared by both Lipschitz ratios
            if self.lipschitz_denominator == "fixed":
                denominator = denominator.detach()
        if self.lipschitz_weight:
            value = value + self.lipschitz_weight * per_sample_mse(clean_logits, logits) / denominator
        if self.uses_router:
            value = value + self._router_terms(check_router_logits(router_logits, "This objective"), ctx, denominator)
        return ObjectiveOutput(value=value, logits=logits)

    def _router_terms(self, router_logits, ctx: ObjectiveContext, denominator) -> torch.Tensor:
        """router_ce_weight * router_consistency_ce + router_lipschitz_weight * router_lipschitz_ratio
        - guidance_weight * guidance_ce, fused over layers (one log-softmax on the stacked ``(B, layers, units, E)``
        logits; clean targets / probabilities precomputed). Equal to the public functions of this module (tested)."""
        log_probs = stack_router_layers(router_logits).log_softmax(dim=-1)  # (B, L, U, E)
        total = 0.0
        if self.router_ce_weight:
            ce = -log_probs.gather(-1, ctx.clean_router_top1[..., None]).squeeze(-1).mean(dim=(1, 2))
            total = total + self.router_ce_weight * ce
        if self.router_lipschitz_weight:
            spread = (log_probs.exp() - ctx.clean_router_probs).pow(2).mean(dim=(1, 2, 3))
            total = total + self.router_lipschitz_weight * spread / denominator
        if self.guidance_weight:
            index = ctx.guidance_target[:, None, None, None].expand(-1, log_probs.shape[1], log_probs.shape[2], 1)
            guidance = -log_probs.gather(-1, index).squeeze(-1).mean(dim=(1, 2))
            total = total - self.guidance_weight * guidance
        return total

    def describe(self) -> str:
        """A human-readable formula of the objective (used in attack ``repr`` and settings)."""
        g = "E_i" if self.component == "expert" else "F"
        terms = []
        if self.loss is not None:
            name = self.loss.upper()
            terms.append(f"-{name}({g}(x+d), t)" if (self.targeted and self.loss == "ce") else f"{name}({g}(x+d), y)")
        if self.lipschitz_weight:
            terms.append(f"{self.lipschitz_weight:g}*Lip({g})")
        if self.router_ce_weight:
            terms.append(f"{self.router_ce_weight:g}*CE(R(x+d), r(x))")
        if self.router_lipschitz_weight:
            terms.append(f"{self.router_lipschitz_weight:g}*Lip(R)")
        if self.guidance_weight:
            terms.append(f"-{self.guidance_weight:g}*CE(R(x+d), weakest)")
        return " + ".join(terms).replace("+ -", "- ")

    def __repr__(self) -> str:
        return f"Objective({self.describe()})"
