"""`AdversarialTrainingArguments`: `transformers.TrainingArguments` plus the adversarial-training recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..attacks import (
    DEFAULT_EXPERT_LIPSCHITZ_WEIGHT,
    DEFAULT_GUIDANCE_WEIGHT,
    DEFAULT_LIPSCHITZ_WEIGHT,
    DEFAULT_ROUTER_LIPSCHITZ_WEIGHT,
    DEFAULT_ROUTER_WEIGHT,
    TEMPORAL_STEPS,
)
from .argument_checks import (
    ADV_METHODS,
    JTLAT_ROUTER_BALANCES,
    JTLAT_STEPS,
    JTLAT_UPDATES,
    MOE_ONLY_METHODS,
    NORMS,
    ROBUST_METRIC_PREFIX,
    WORST_CASE_METRIC,
    validate_adversarial_arguments,
)

__all__ = [
    "ADV_METHODS",
    "JTLAT_ROUTER_BALANCES",
    "JTLAT_STEPS",
    "JTLAT_UPDATES",
    "MOE_ONLY_METHODS",
    "NORMS",
    "ROBUST_METRIC_PREFIX",
    "WORST_CASE_METRIC",
    "AdversarialTrainingArguments",
]


@dataclass
class AdversarialTrainingArguments(TrainingArguments):
    r"""[`~transformers.TrainingArguments`] for adversarial training of (MoE) video classifiers.

    Every field of `TrainingArguments` is available; the ones below choose the adversarial-training method, the
    attack used *inside* the training step (re-computed with the current weights for every batch), the weights of
    the paper's losses and the robust evaluation run by [`AdversarialTrainer.evaluate`].

    Two `TrainingArguments` defaults change:

    - `remove_unused_columns=False`: video datasets often decode frames in a `with_transform` / `set_transform`
      from raw columns (e.g. a file path) that `Trainer` would otherwise drop before the transform sees them. The
      trainers only ever feed `pixel_values` (and `labels`) to the model, so extra columns are harmless as long as the
      collator ignores them (`default_data_collator` skips strings; [`~hf_videomoe.data.VideoCollator`] drops them).
    - `ddp_find_unused_parameters=True`: under `DistributedDataParallel` an expert that receives no token on a
      process has no gradient there, and the router-only / expert-only updates of J-TLAT and AdvMoE leave whole
      parameter groups unused in a pass. DDP needs `find_unused_parameters=True` for both; J-TLAT and AdvMoE refuse
      `False`.

    Selecting the most robust checkpoint: with `eval_attacks=["pgd", "j-tlga"]`, evaluation reports
    `eval_robust_accuracy_pgd`, `eval_robust_accuracy_j-tlga` and `eval_worst_case_accuracy` (the fraction of clips
    that no attack fools). Set `load_best_model_at_end=True`, `metric_for_best_model="eval_worst_case_accuracy"` (or
    `"eval_robust_accuracy_pgd"`) and `greater_is_better=True` (inferred automatically for these names, since they do
    not end in `loss`); `eval_strategy` and `save_strategy` must match as usual.

    Args:
        adv_method (`str`, *optional*):
            `"none"` (clean training), `"pgd-at"` (Madry et al.), `"trades"` (Zhang et al. 2019), `"advmoe"`
            (AdvMoE-style alternating router / expert training, Zhang et al. 2023), `"tlat"` (single-stage temporal
            Lipschitz AT) or `"j-tlat"` (the paper's joint three-step method). `None` picks the trainer's default:
            `"pgd-at"` for [`AdversarialTrainer`], `"j-tlat"` for [`JTLATTrainer`].
        adv_eps (`float`, *optional*, defaults to 8/255):
            Perturbation budget of the training attacks, in pixel units of the [0, 1] input (so 8/255 means 8 grey
            levels). Must lie in [0, 1].
        adv_steps (`int`, *optional*, defaults to 5):
            Iterations of every training attack (`0` trains on the random start / clean input).
        adv_step_size (`float`, *optional*):
            Step size of the training attacks; `None` uses the attacks' default (`2.5 * eps / steps`).
        adv_norm (`str`, *optional*, defaults to `"linf"`):
            `"linf"` or `"l2"`.
        adv_attack (`str`, *optional*):
            Attack that generates the training examples of the single-stage methods; `None` uses the method's
            attack: `pgd` for PGD-AT and AdvMoE's expert step, `tla-m` for TLAT. TRADES always maximises its own KL
            term.
        lipschitz_weight (`float`, *optional*, defaults to 1.7e-5):
            λ_F, the weight of the temporal Lipschitz term L_Lip(F) = MSE(F(x), F(x+δ)) / MSE(x, x+δ) of the whole
            model in the losses of TLAT and J-TLAT step 3 and in the paper's model and joint attacks. `>= 0`.
        expert_lipschitz_weight (`float`, *optional*, defaults to 7e-6):
            λ_E, the weight of L_Lip(E_i) in J-TLAT step 2 and in TLA-E. `>= 0`.
        router_lipschitz_weight (`float`, *optional*, defaults to 4e-3):
            λ_R, the weight of the router's L_Lip(R) (on router probabilities) in J-TLAT step 1 and in the paper's
            router and joint attacks. `>= 0`. Router probabilities move some 10⁴ times less than logits, so one λ for
            all three terms left step 1's Lipschitz term at ≈ 1e-4 of its cross-entropy. Each default puts its term
            at a quarter of its cross-entropy on the demo's mixture before adversarial training (the model J-TLAT
            starts from; `python scripts/calibrate_lipschitz.py`, docs/lipschitz_calibration.md). The ratios shrink
            as training makes the model smoother, and the fractions with them.
        lipschitz_detach_clean (`bool`, *optional*, defaults to `True`):
            In the training losses, treat the clean side ``g(x)`` of every Lipschitz term as a fixed target: the
            gradient pulls ``g(x + δ)`` toward ``g(x)`` (consistency-training style) instead of pulling both toward
            each other, and the clean clips are forwarded once per step without gradient (shared by the J-TLAT steps)
            instead of being back-propagated in every step. `False` back-propagates through both sides.
        guidance_weight (`float`, *optional*, defaults to 1.0):
            γ1, the weight of TLGA-R's guidance toward the weakest expert (attacks of J-TLAT). `>= 0`.
        router_weight (`float`, *optional*, defaults to 1.0):
            γ2, the weight of the router term in J-TLGA (attack of J-TLAT step 3). `>= 0`.
        temporal_momentum (`float`, *optional*, defaults to 0.9):
            β of the temporal adaptive step of the paper's attacks, in [0, 1].
        temporal_step (`str`, *optional*, defaults to `"normalized"`):
            Per-frame step rule of the paper's attacks: `"normalized"` (the published rule rescaled so a clip's
            mean step is the uniform one), `"published"` (as printed: every frame's step at most the uniform one),
            `"uniform"` or `"inverse"` (see `hf_videomoe.attacks.temporal_step_sizes`).
        trades_beta (`float`, *optional*, defaults to 6.0):
            β of TRADES: `CE(f(x), y) + β · KL(f(x) ‖ f(x_adv))`. `>= 0`.
        jtlat_router_attack (`str`, *optional*, defaults to `"tlga-r"`):
            Attack generating the examples of J-TLAT steps 1 and 2: `"tlga-r"`, `"tla-r"` or `"pgd-r"`.
        jtlat_expert_attack (`str`, *optional*):
            Attack generating the examples of J-TLAT step 2: `None` (default) reuses step 1's router-attack examples
            as the paper does; `"tla-e"` attacks each clip's clean top-1 expert path directly (TLA-E), so the experts
            train on examples aimed at them.
        jtlat_model_attack (`str`, *optional*, defaults to `"j-tlga"`):
            Attack generating the examples of J-TLAT step 3: `"j-tlga"`, `"j-tla"`, `"tla-m"` or `"pgd"`.
        jtlat_reuse_adversarial (`bool`, *optional*, defaults to `False`):
            Generate one adversarial batch per training step (with `jtlat_model_attack`) and use it in all three
            J-TLAT steps instead of running a router attack for steps 1-2 and a joint attack for step 3. Halves the
            attack cost; with top-1 routing steps 1 and 3 then also share one forward / backward pass.
        jtlat_steps (`list[str]`, *optional*, defaults to `["router", "expert", "model"]`):
            Which J-TLAT steps run on every batch (`"router"`/`"1"`, `"expert"`/`"2"`, `"model"`/`"3"`); they
            always run in that order.
        jtlat_update (`str`, *optional*, defaults to `"summed"`):
            How J-TLAT's steps update the weights: `"summed"`, every step's gradient from the weights at the start of
            the training step and one optimizer step for their sum; or `"sequential"`, the paper's three updates in
            a row, each step's attack, clean targets and expert choice seeing the weights the previous steps left
            (the optimizer steps once per J-TLAT step, the scheduler once per training step; one process, no
            gradient accumulation). See docs/METHOD.md, "One optimizer step, not three".
        jtlat_router_target (`str`, *optional*, defaults to `"hard"`):
            Target of J-TLAT step 1's routing-consistency cross-entropy: `"hard"`, the clean top-1 expert of each
            routing unit (the paper's `r(x)`), or `"soft"`, the clean router probabilities (a KL-style consistency
            whose minimum does not reward sharper routing).
        jtlat_router_balance_weight (`float`, *optional*, defaults to 1.0):
            Weight of a load-balancing term (on the adversarial router logits) added to J-TLAT step 1. Our addition; 0
            disables it. Step 1 pulls every routing unit toward its own (moving) clean decision, and with renormalised
            top-1 routing the task loss sends the router no gradient, so nothing else pushes back: without it the
            demo's routers collapse onto one expert per layer (docs/METHOD.md §3, "Router collapse").
        jtlat_router_balance (`str`, *optional*, defaults to `"sharp"`):
            Which balance term: `"switch"`, the Switch-Transformer loss `N·Σ f_e·P_e` (`load_balancing_loss`), or
            `"sharp"`, `N·Σ q_e²` on the mean of `softmax(logits / jtlat_router_balance_temperature)`
            (`sharpened_balance_loss`), which penalises unbalanced *decisions* even when the router probabilities are
            nearly uniform (where the Switch loss is already ≈ 1).
        jtlat_router_balance_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the `"sharp"` balance term (smaller = closer to the hard top-1 counts).
        jtlat_top_k (`int`, *optional*, defaults to 2):
            Number of experts (the top ones of the clip-level router probabilities on the step-2 adversarial clip)
            trained per clip in J-TLAT step 2.
        advmoe_router_attack (`str`, *optional*, defaults to `"pgd"`):
            Attack generating the examples of AdvMoE's router steps (`"pgd"` attacks the whole model as in AdvMoE;
            `"pgd-r"` / `"tla-r"` attack the routers directly).
        eval_attacks (`list[str]`, *optional*, defaults to `[]`):
            Attacks (names of `hf_videomoe.attacks.ATTACKS`) under which `evaluate()` also reports robust accuracy
            (`eval_robust_accuracy_<attack>`) and the worst case over them (`eval_worst_case_accuracy`).
        eval_attack_eps (`float`, *optional*):
            Budget of the evaluation attacks; `None` uses `adv_eps`.
        eval_attack_steps (`int`, *optional*, defaults to 10):
            Iterations of the evaluation attacks.
        eval_max_samples (`int`, *optional*, defaults to 256):
            Robust accuracy is measured on the first `eval_max_samples` clips of the evaluation set (`None`: all).
    """

    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Whether to drop dataset columns the model's forward does not accept. Defaults to False for "
            "video datasets that decode frames in a transform from raw columns."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True,
        metadata={
            "help": "`find_unused_parameters` of DistributedDataParallel. Defaults to True: experts without tokens "
            "and the router-only / expert-only updates of J-TLAT and AdvMoE leave parameters unused."
        },
    )

    adv_method: str | None = field(
        default=None,
        metadata={
            "help": "Adversarial training method: none, pgd-at, trades, advmoe, tlat or j-tlat (None: the trainer's "
            "default, pgd-at for AdversarialTrainer and j-tlat for JTLATTrainer).",
            "choices": [None, *ADV_METHODS],
        },
    )
    adv_eps: float = field(default=8 / 255, metadata={"help": "Training attack budget in [0, 1] pixel units."})
    adv_steps: int = field(default=5, metadata={"help": "Iterations of the training attacks."})
    adv_step_size: float | None = field(
        default=None, metadata={"help": "Step size of the training attacks (None: the attacks' default)."}
    )
    adv_norm: str = field(default="linf", metadata={"help": "Threat model: linf or l2.", "choices": list(NORMS)})
    adv_attack: str | None = field(
        default=None,
        metadata={"help": "Attack for single-stage methods (None: pgd for PGD-AT/AdvMoE, tla-m for TLAT)."},
    )
    lipschitz_weight: float = field(
        default=DEFAULT_LIPSCHITZ_WEIGHT, metadata={"help": "λ_F, weight of the model's temporal Lipschitz term."}
    )
    expert_lipschitz_weight: float = field(
        default=DEFAULT_EXPERT_LIPSCHITZ_WEIGHT, metadata={"help": "λ_E, weight of the experts' Lipschitz term."}
    )
    router_lipschitz_weight: float = field(
        default=DEFAULT_ROUTER_LIPSCHITZ_WEIGHT, metadata={"help": "λ_R, weight of the routers' Lipschitz term."}
    )
    lipschitz_detach_clean: bool = field(
        default=True,
        metadata={"help": "Treat the clean side of the Lipschitz terms as a fixed target (no gradient through it)."},
    )
    guidance_weight: float = field(default=DEFAULT_GUIDANCE_WEIGHT, metadata={"help": "γ1, TLGA-R guidance weight."})
    router_weight: float = field(
        default=DEFAULT_ROUTER_WEIGHT, metadata={"help": "γ2, weight of the router term of J-TLGA."}
    )
    temporal_momentum: float = field(default=0.9, metadata={"help": "β of the temporal adaptive step, in [0, 1]."})
    temporal_step: str = field(
        default="normalized",
        metadata={"help": "Per-frame step rule of the paper's attacks.", "choices": list(TEMPORAL_STEPS)},
    )
    trades_beta: float = field(default=6.0, metadata={"help": "β of TRADES."})
    jtlat_router_attack: str = field(
        default="tlga-r", metadata={"help": "Attack of J-TLAT steps 1-2: tlga-r, tla-r or pgd-r."}
    )
    jtlat_expert_attack: str | None = field(
        default=None, metadata={"help": "Attack of J-TLAT step 2: None (step 1's examples) or tla-e."}
    )
    jtlat_model_attack: str = field(
        default="j-tlga", metadata={"help": "Attack of J-TLAT step 3: j-tlga, j-tla, tla-m or pgd."}
    )
    jtlat_reuse_adversarial: bool = field(
        default=False, metadata={"help": "Reuse one adversarial batch (jtlat_model_attack) for all J-TLAT steps."}
    )
    jtlat_steps: list[str] = field(
        default_factory=lambda: list(JTLAT_STEPS),
        metadata={"help": "J-TLAT steps to run on every batch: router, expert, model (or 1, 2, 3)."},
    )
    jtlat_top_k: int = field(default=2, metadata={"help": "Experts trained per clip in J-TLAT step 2."})
    jtlat_update: str = field(
        default="summed",
        metadata={
            "help": "J-TLAT update: summed (one optimizer step for the three steps' gradients) or sequential "
            "(the paper's three updates in a row).",
            "choices": list(JTLAT_UPDATES),
        },
    )
    jtlat_router_target: str = field(
        default="hard",
        metadata={
            "help": "Target of J-TLAT step 1's consistency CE: hard (clean top-1) or soft (clean probabilities).",
            "choices": ["hard", "soft"],
        },
    )
    jtlat_router_balance_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the load-balancing term in J-TLAT step 1 (0 = the router objective alone)."},
    )
    jtlat_router_balance: str = field(
        default="sharp",
        metadata={
            "help": "Balance term of J-TLAT step 1: switch (N·Σ f·P) or sharp (N·Σ q², q = mean softmax(z/τ)).",
            "choices": list(JTLAT_ROUTER_BALANCES),
        },
    )
    jtlat_router_balance_temperature: float = field(
        default=0.1, metadata={"help": "Temperature τ of the sharp balance term of J-TLAT step 1."}
    )
    advmoe_router_attack: str = field(
        default="pgd", metadata={"help": "Attack generating AdvMoE's router-step examples."}
    )
    eval_attacks: list[str] = field(
        default_factory=list,
        metadata={"help": "Attacks for robust accuracy during evaluation (e.g. pgd j-tlga)."},
    )
    eval_attack_eps: float | None = field(
        default=None, metadata={"help": "Budget of the evaluation attacks (None: adv_eps)."}
    )
    eval_attack_steps: int = field(default=10, metadata={"help": "Iterations of the evaluation attacks."})
    eval_max_samples: int | None = field(
        default=256, metadata={"help": "Evaluation clips used for robust accuracy (None: all)."}
    )

    def __post_init__(self):
        super().__post_init__()
        validate_adversarial_arguments(self)

    def paper_attack_kwargs(self, attack_cls) -> dict:
        """The temporal-step rule, γ1, γ2, λ_R and β of these arguments for one of the paper's attacks, with its
        ``lipschitz_weight`` set to the λ of the component it attacks (λ_R for router attacks, λ_E for TLA-E, λ_F
        otherwise)."""
        kwargs = {
            key: getattr(self, key)
            for key in (
                "guidance_weight",
                "router_weight",
                "router_lipschitz_weight",
                "temporal_momentum",
                "temporal_step",
            )
        }
        weights = {
            "router": self.router_lipschitz_weight,
            "expert": self.expert_lipschitz_weight,
            "model": self.lipschitz_weight,
        }
        kwargs["lipschitz_weight"] = weights[getattr(attack_cls, "lipschitz_component", "model")]
        return kwargs

    def adversarial_recipe(self) -> dict:
        """The adversarial-training settings as a JSON-serialisable dict (for model cards and logs)."""
        keys = (
            "adv_method", "adv_eps", "adv_steps", "adv_step_size", "adv_norm", "adv_attack", "lipschitz_weight",
            "expert_lipschitz_weight", "router_lipschitz_weight", "lipschitz_detach_clean",
            "guidance_weight", "router_weight", "temporal_momentum", "temporal_step", "trades_beta",
            "jtlat_router_attack", "jtlat_expert_attack", "jtlat_model_attack", "jtlat_reuse_adversarial",
            "jtlat_steps", "jtlat_top_k", "jtlat_update", "jtlat_router_target", "jtlat_router_balance_weight",
            "jtlat_router_balance", "jtlat_router_balance_temperature",
            "advmoe_router_attack", "eval_attacks", "eval_attack_eps", "eval_attack_steps", "eval_max_samples",
        )  # fmt: skip
        return {key: getattr(self, key) for key in keys}
