"""The paper's component-level attacks on video Mixture-of-Experts (Wang et al., ICLR 2026).

With F the MoE classifier, R its routers (all MoE layers, every routing unit), E_i the model with routing forced to
expert i, r(x) the clean top-1 routing decision of each unit and ŷ_R the clip's weakest clean expert:

==========  ===========================================================================  =====================
name        objective (maximised)                                                        best iterate
==========  ===========================================================================  =====================
``pgd-r``   CE(R(x+δ), r(x)), plain sign steps                                            highest objective
``tla-r``   ℓ_Router = CE(R(x+δ), r(x)) + λ_R·L_Lip(R)                                    highest objective
``tlga-r``  ℓ*_Router = ℓ_Router − γ1·CE(R(x+δ), ŷ_R)                                     highest objective
``tla-e``   CE(E_i(x+δ), y) + λ·L_Lip(E_i), i = clean top-1 expert of the clip            E_i misclassifies
``tla-m``   ℓ_MoE = CE(F(x+δ), y) + λ·L_Lip(F)                                            F misclassifies
``j-tla``   ℓ_MoE + γ2·ℓ_Router                                                           F misclassifies
``j-tlga``  ℓ_MoE + γ2·ℓ*_Router                                                          F misclassifies
==========  ===========================================================================  =====================

All but ``pgd-r`` use the temporal adaptive step, by default the published rule rescaled so that a clip's mean step
is the uniform one (``temporal_step="normalized"``; ``"published"`` is the paper's rule as printed). Every Lipschitz
ratio is differentiated with its denominator MSE(x, x+δ) held fixed (``lipschitz_denominator="fixed"``; the paper's
formula, ``"gradient"``, also rewards shrinking δ). λ is set per component: ``lipschitz_weight`` for F or E_i,
``router_lipschitz_weight`` for R, each calibrated so that the term is a quarter of its cross-entropy on a trained
mixture (docs/METHOD.md §2, ``scripts/calibrate_lipschitz.py``). ``tla-m`` only needs logits and also applies to
dense models.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .gradient import GradientAttack
from .objectives import CLASSIFICATION_LOSSES, LIPSCHITZ_DENOMINATORS, Objective
from .validation import check_choice, check_real

# λ per component, each set so that λ·L_Lip is a quarter of the cross-entropy next to it (median over training clips)
# on the demo's mixture before adversarial training, with J-TLAT's 2-step training attacks at 4/255
# (`python scripts/calibrate_lipschitz.py`, docs/lipschitz_calibration.md).
DEFAULT_LIPSCHITZ_WEIGHT = 1.7e-5
"""λ_F: weight of the Lipschitz ratio of the whole model F (logits)."""
DEFAULT_EXPERT_LIPSCHITZ_WEIGHT = 7e-6
"""λ_E: weight of the Lipschitz ratio of one expert path E_i (logits)."""
DEFAULT_ROUTER_LIPSCHITZ_WEIGHT = 4e-3
"""λ_R: weight of the router's Lipschitz ratio (on router probabilities, which move some 10⁴ times less than logits:
one λ for all three terms left the router's at 1e-4 of its cross-entropy)."""
DEFAULT_GUIDANCE_WEIGHT = 1.0
"""γ1: weight of the guidance CE toward the weakest expert in ℓ*_Router."""
DEFAULT_ROUTER_WEIGHT = 1.0
"""γ2: weight of the router loss in the joint attacks."""

__all__ = [
    "DEFAULT_EXPERT_LIPSCHITZ_WEIGHT",
    "DEFAULT_GUIDANCE_WEIGHT",
    "DEFAULT_LIPSCHITZ_WEIGHT",
    "DEFAULT_ROUTER_LIPSCHITZ_WEIGHT",
    "DEFAULT_ROUTER_WEIGHT",
    "JTLA",
    "JTLGA",
    "PGDR",
    "TLAE",
    "TLAM",
    "TLAR",
    "TLGAR",
]


class _Guided:
    """γ1 (``guidance_weight``) of the guided attacks: steer every routing unit toward ŷ_R, the expert with the lowest
    clean router probability of the clip."""

    def __init__(self, *, guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT, **kwargs):
        self.guidance_weight = check_real("guidance_weight", guidance_weight, minimum=0.0)
        super().__init__(**kwargs)


class _LipschitzAttack(GradientAttack):
    """Gradient attacks with a temporal Lipschitz term (the paper's ``tla-*`` / ``tlga-r`` / ``j-tla*``).

    Args (besides [`GradientAttack`]'s):
        lipschitz_weight: λ of the attacked component's Lipschitz ratio (``None``: the component's calibrated
            default: [`DEFAULT_LIPSCHITZ_WEIGHT`] for F, [`DEFAULT_EXPERT_LIPSCHITZ_WEIGHT`] for E_i,
            [`DEFAULT_ROUTER_LIPSCHITZ_WEIGHT`] for R).
        lipschitz_denominator: ``"fixed"`` (default: MSE(x, x+δ) detached, so the step only pushes the output change;
            the stronger attack in our measurements, docs/RESULTS.md §3) or ``"gradient"`` (the paper's L_Lip,
            differentiated through the denominator too, which rewards shrinking δ).
    """

    default_temporal_step = "normalized"
    #: the component whose Lipschitz ratio ``lipschitz_weight`` weighs: "model" (F), "expert" (E_i) or "router" (R)
    lipschitz_component: ClassVar[str] = "model"
    default_lipschitz_weight: ClassVar[float] = DEFAULT_LIPSCHITZ_WEIGHT

    def __init__(self, *, lipschitz_weight: float | None = None, lipschitz_denominator: str = "fixed", **kwargs):
        if lipschitz_weight is None:
            lipschitz_weight = self.default_lipschitz_weight
        self.lipschitz_weight = check_real("lipschitz_weight", lipschitz_weight, minimum=0.0)
        self.lipschitz_denominator = check_choice(
            "lipschitz_denominator", lipschitz_denominator, LIPSCHITZ_DENOMINATORS
        )
        super().__init__(**kwargs)

    def _extra_settings(self) -> dict[str, Any]:
        return {
            "lipschitz_weight": self.lipschitz_weight,
            "lipschitz_denominator": self.lipschitz_denominator,
            **super()._extra_settings(),
        }


class _RouterAttack(GradientAttack):
    """Attacks whose objective is the routing itself: no labels, no targeted mode, best iterate by objective."""

    requires_moe = True
    requires_labels = False
    supports_targeted = False
    default_selection = "objective"


class PGDR(_RouterAttack):
    """PGD-R: plain sign-PGD on the router consistency CE (flip each unit's clean top-1 routing decision).

    Takes every [`Attack`] / [`GradientAttack`] argument (``temporal_step`` defaults to ``"uniform"``). Labels are not
    needed.
    """

    name = "pgd-r"

    def build_objective(self) -> Objective:
        return Objective(loss=None, router_ce_weight=1.0)


class TLAR(_LipschitzAttack, _RouterAttack):
    """TLA-R: temporal Lipschitz attack on the routers, ℓ_Router = CE(R(x+δ), r(x)) + λ_R·L_Lip(R), with temporal
    adaptive steps.

    Args (besides [`GradientAttack`]'s; ``temporal_step`` defaults to ``"normalized"``):
        lipschitz_weight: λ_R (default [`DEFAULT_ROUTER_LIPSCHITZ_WEIGHT`]).
        lipschitz_denominator: see [`_LipschitzAttack`].
    """

    name = "tla-r"
    lipschitz_component = "router"
    default_lipschitz_weight = DEFAULT_ROUTER_LIPSCHITZ_WEIGHT

    def build_objective(self) -> Objective:
        return Objective(
            loss=None,
            router_ce_weight=1.0,
            router_lipschitz_weight=self.lipschitz_weight,
            lipschitz_denominator=self.lipschitz_denominator,
        )


class TLGAR(_Guided, TLAR):
    """TLGA-R: guided router attack, ℓ*_Router = ℓ_Router − γ1·CE(R(x+δ), ŷ_R): flip the clean routing while steering
    every unit toward ŷ_R, the expert with the lowest clean router probability of the clip.

    Args (besides [`TLAR`]'s):
        guidance_weight: γ1.
    """

    name = "tlga-r"

    def build_objective(self) -> Objective:
        return Objective(
            loss=None,
            router_ce_weight=1.0,
            router_lipschitz_weight=self.lipschitz_weight,
            guidance_weight=self.guidance_weight,
            lipschitz_denominator=self.lipschitz_denominator,
        )

    def _extra_settings(self) -> dict[str, Any]:
        return {"guidance_weight": self.guidance_weight, **super()._extra_settings()}


class TLAM(_LipschitzAttack):
    """TLA-M: temporal Lipschitz attack on the whole model, ℓ_MoE = CE(F(x+δ), y) + λ·L_Lip(F) (Lipschitz ratio on the
    logits), with temporal adaptive steps. Needs only logits, so it also applies to dense models.

    Args (besides [`GradientAttack`]'s; ``temporal_step`` defaults to ``"normalized"``):
        lipschitz_weight, lipschitz_denominator: see [`_LipschitzAttack`].
        loss: the classification loss, ``"ce"`` (the paper's) or ``"dlr"`` (AutoAttack's scale-invariant
            Difference-of-Logits-Ratio, which does not saturate on confident logits; with the DLR loss the objective
            replaces CE by DLR in every formula below). The default λ were calibrated against the CE; DLR lies in
            [-1, 1], so the Lipschitz terms weigh more next to it — scale ``lipschitz_weight`` down if that matters.
    """

    name = "tla-m"

    def __init__(self, *, loss: str = "ce", **kwargs):
        self.loss = check_choice("loss", loss, CLASSIFICATION_LOSSES)
        super().__init__(**kwargs)

    def build_objective(self) -> Objective:
        return Objective(
            loss=self.loss,
            lipschitz_weight=self.lipschitz_weight,
            targeted=self.targeted,
            lipschitz_denominator=self.lipschitz_denominator,
        )

    def _extra_settings(self) -> dict[str, Any]:
        return {"loss": self.loss, **super()._extra_settings()}


class TLAE(TLAM):
    """TLA-E: attack on one expert, CE(E_i(x+δ), y) + λ·L_Lip(E_i), where i is the clip's clean top-1 expert (argmax
    of the clean router probabilities averaged over units and layers) and E_i(x) is the model with every MoE layer
    forced to expert i. Samples are grouped by expert: one forced forward per distinct expert per step.

    The best iterate is the first one that fools E_i (the attacked component), else the one with the highest
    objective. Args as [`TLAM`] (``lipschitz_weight`` is λ_E, default [`DEFAULT_EXPERT_LIPSCHITZ_WEIGHT`]).
    """

    name = "tla-e"
    requires_moe = True
    lipschitz_component = "expert"
    default_lipschitz_weight = DEFAULT_EXPERT_LIPSCHITZ_WEIGHT

    def build_objective(self) -> Objective:
        return Objective(
            loss=self.loss,
            lipschitz_weight=self.lipschitz_weight,
            component="expert",
            targeted=self.targeted,
            lipschitz_denominator=self.lipschitz_denominator,
        )


class JTLA(TLAM):
    """J-TLA: joint attack on the whole model and the routers with one perturbation,
    ℓ_MoE + γ2·ℓ_Router = CE(F(x+δ), y) + λ·L_Lip(F) + γ2·(CE(R(x+δ), r(x)) + λ_R·L_Lip(R)).

    Every term comes from the same forward pass, so a step costs one forward and one backward.

    Args (besides [`TLAM`]'s):
        router_weight: γ2.
        router_lipschitz_weight: λ_R (``None``: [`DEFAULT_ROUTER_LIPSCHITZ_WEIGHT`]); ``lipschitz_weight`` is λ_F.
    """

    name = "j-tla"
    requires_moe = True

    def __init__(
        self, *, router_weight: float = DEFAULT_ROUTER_WEIGHT, router_lipschitz_weight: float | None = None, **kwargs
    ):
        self.router_weight = check_real("router_weight", router_weight, minimum=0.0)
        if router_lipschitz_weight is None:
            router_lipschitz_weight = DEFAULT_ROUTER_LIPSCHITZ_WEIGHT
        self.router_lipschitz_weight = check_real("router_lipschitz_weight", router_lipschitz_weight, minimum=0.0)
        super().__init__(**kwargs)

    def build_objective(self) -> Objective:
        return self.joint_objective(guidance_weight=0.0)

    def joint_objective(self, guidance_weight: float) -> Objective:
        """ℓ_MoE + γ2·ℓ_Router, minus ``guidance_weight`` times the guidance CE."""
        return Objective(
            loss=self.loss,
            lipschitz_weight=self.lipschitz_weight,
            router_ce_weight=self.router_weight,
            router_lipschitz_weight=self.router_weight * self.router_lipschitz_weight,
            guidance_weight=guidance_weight,
            targeted=self.targeted,
            lipschitz_denominator=self.lipschitz_denominator,
        )

    def _extra_settings(self) -> dict[str, Any]:
        return {
            "router_weight": self.router_weight,
            "router_lipschitz_weight": self.router_lipschitz_weight,
            **super()._extra_settings(),
        }


class JTLGA(_Guided, JTLA):
    """J-TLGA: the paper's strongest attack, ℓ*_MoE = ℓ_MoE + γ2·ℓ*_Router
    = CE(F(x+δ), y) + λ·L_Lip(F) + γ2·(CE(R(x+δ), r(x)) + λ_R·L_Lip(R) − γ1·CE(R(x+δ), ŷ_R)).

    Args (besides [`JTLA`]'s):
        guidance_weight: γ1.
    """

    name = "j-tlga"

    def build_objective(self) -> Objective:
        # J-TLA's objective plus the guidance term, weighted by γ2 like the rest of the router loss.
        return self.joint_objective(guidance_weight=self.router_weight * self.guidance_weight)

    def _extra_settings(self) -> dict[str, Any]:
        return {"guidance_weight": self.guidance_weight, **super()._extra_settings()}
