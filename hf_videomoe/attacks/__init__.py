"""Adversarial attacks for video classifiers and video Mixture-of-Experts.

```python
from hf_videomoe.attacks import build_attack, ATTACKS

attack = build_attack("j-tlga", eps=8 / 255, steps=10)
adv_batch = attack(model, {"pixel_values": pixel_values, "labels": labels})   # new dict, input untouched
adv_pixels = attack.perturb(model, pixel_values, labels)                      # tensors in, tensor out
test_set = test_set.with_transform(attack.as_transform(model))                # adversarial `datasets` on the fly
```

Standard attacks (any classifier): ``fgsm``, ``pgd``, ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``square``, ``tla-m``.
Component attacks (MoE only): ``pgd-r``, ``tla-r``, ``tlga-r`` (routers), ``tla-e`` (one expert), ``j-tla``,
``j-tlga`` (joint). Objectives live in [`hf_videomoe.attacks.objectives`], MoE diagnostics (routing change, router
Lipschitz estimate, expert usage) in [`hf_videomoe.attacks.diagnostics`].
"""

from . import diagnostics, objectives
from .apgd import APGD, APGDCE, APGDDLR, APGDT
from .base import Attack, BestIterate
from .diagnostics import expert_usage, router_lipschitz, routing_change
from .gradient import GradientAttack
from .model_guard import NormalizedModel, attack_mode, pixel_space_model, processor_normalization
from .moe_attacks import (
    DEFAULT_EXPERT_LIPSCHITZ_WEIGHT,
    DEFAULT_GUIDANCE_WEIGHT,
    DEFAULT_LIPSCHITZ_WEIGHT,
    DEFAULT_ROUTER_LIPSCHITZ_WEIGHT,
    DEFAULT_ROUTER_WEIGHT,
    JTLA,
    JTLGA,
    PGDR,
    TLAE,
    TLAM,
    TLAR,
    TLGAR,
)
from .objectives import Objective
from .pgd import FGSM, PGD
from .registry import ATTACKS, DENSE_ATTACKS, MOE_ATTACKS, build_attack, resolve_attack_name, split_attacks_for_model
from .square import Square
from .temporal_translation import TT
from .threat_model import DEFAULT_EPS, NORMS, TEMPORAL_STEPS, project, random_start, sample_seeds, temporal_step_sizes

__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "APGDT",
    "ATTACKS",
    "Attack",
    "BestIterate",
    "DEFAULT_EPS",
    "DEFAULT_GUIDANCE_WEIGHT",
    "DEFAULT_EXPERT_LIPSCHITZ_WEIGHT",
    "DEFAULT_LIPSCHITZ_WEIGHT",
    "DEFAULT_ROUTER_LIPSCHITZ_WEIGHT",
    "DEFAULT_ROUTER_WEIGHT",
    "DENSE_ATTACKS",
    "FGSM",
    "GradientAttack",
    "JTLA",
    "JTLGA",
    "MOE_ATTACKS",
    "NORMS",
    "NormalizedModel",
    "Objective",
    "PGD",
    "PGDR",
    "Square",
    "TT",
    "TEMPORAL_STEPS",
    "TLAE",
    "TLAM",
    "TLAR",
    "TLGAR",
    "attack_mode",
    "pixel_space_model",
    "processor_normalization",
    "build_attack",
    "diagnostics",
    "expert_usage",
    "objectives",
    "project",
    "random_start",
    "resolve_attack_name",
    "split_attacks_for_model",
    "router_lipschitz",
    "routing_change",
    "sample_seeds",
    "temporal_step_sizes",
]
