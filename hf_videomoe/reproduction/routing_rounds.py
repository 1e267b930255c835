"""The rounds of routing-relevance experiments behind the demo's mixture and the reproduction's recipe: each round's
variants, and the rule that judged TimeSformer-MoE's rounds 15-16 (docs/PROTOCOL.md, "Schedule", step 5).

``scripts/routing_relevance.py`` runs and tabulates them; what each round asked and found is in docs/history.md. Its
result files are numbered by a variant's position in ``VARIANTS`` / ``AT_VARIANTS``, so a variant is never removed or
moved: a new round is appended.
"""

from __future__ import annotations

import torch

__all__ = [
    "AT_VARIANTS",
    "TIMESFORMER_ROUNDS",
    "TIMESFORMER_SEEDS",
    "VARIANTS",
    "timesformer_passes",
    "timesformer_verdicts",
]

STRAIGHT_THROUGH, DROP_UPCYCLING = "straight_through", "drop_upcycling"
MODEL_LEVEL = dict(router_granularity="model")
ROUND_2 = dict(epochs=20, learning_rate=1e-3)  # the mixture phase from round 2 on (the default: --moe-epochs at 5e-4)
MIXTURE_30 = dict(epochs=30, learning_rate=1e-3)


def variant(router_gate: str, expert_init: str = DROP_UPCYCLING, **options) -> dict:
    """A variant of ``--stage variants``: ``from_dense`` / config options, ``cluster`` (k-means router initialisation),
    and the mixture phase's ``epochs`` / ``learning_rate``."""
    return {"router_gate": router_gate, "expert_init": expert_init, **options}


def demo_mixture(aux: float, epochs: int = 30, learning_rate: float = 1e-3) -> dict:
    """The demo's mixture (model-level clustered routers) with balance weight ``aux``."""
    return variant(
        STRAIGHT_THROUGH,
        **MODEL_LEVEL,
        cluster=True,
        router_aux_loss_coef=aux,
        epochs=epochs,
        learning_rate=learning_rate,
    )


# label -> the variant's options, in the order of their result files (variant_<position>.json).
VARIANTS = {
    # Round 1: the gate crossed with the expert initialisation, 5 epochs of mixture training.
    "renormalize + copy (old default)": variant("renormalize", "copy"),
    "straight-through + copy": variant(STRAIGHT_THROUGH, "copy"),
    "switch + copy": variant("switch", "copy"),
    "straight-through + drop-upcycling 0.5": variant(STRAIGHT_THROUGH),
    "switch + drop-upcycling 0.5": variant("switch"),
    "renormalize + drop-upcycling 0.5": variant("renormalize"),
    "model-level, straight-through + copy": variant(STRAIGHT_THROUGH, "copy", **MODEL_LEVEL),
    "model-level, straight-through + drop-upcycling 0.5": variant(STRAIGHT_THROUGH, **MODEL_LEVEL),
    "model-level, renormalize + drop-upcycling 0.5": variant("renormalize", **MODEL_LEVEL),
    # Round 2: a longer mixture phase; model-level routing read from a dense first layer (moe_layers=[1, 2]).
    "20 ep: renormalize + copy": variant("renormalize", "copy", **ROUND_2),
    "20 ep: straight-through + copy": variant(STRAIGHT_THROUGH, "copy", **ROUND_2),
    "20 ep: straight-through + drop-upcycling 0.5": variant(STRAIGHT_THROUGH, **ROUND_2),
    "20 ep: model-level (layers 1-2), straight-through + copy": variant(
        STRAIGHT_THROUGH, "copy", **MODEL_LEVEL, moe_layers=[1, 2], **ROUND_2
    ),
    "20 ep: model-level (layers 1-2), straight-through + drop-upcycling 0.5": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, moe_layers=[1, 2], **ROUND_2
    ),
    "20 ep: model-level (layers 1-2), renormalize + drop-upcycling 0.5": variant(
        "renormalize", **MODEL_LEVEL, moe_layers=[1, 2], **ROUND_2
    ),
    "20 ep: model-level (layers 1-2), straight-through + drop-upcycling 1.0": variant(
        STRAIGHT_THROUGH, expert_init_ratio=1.0, **MODEL_LEVEL, moe_layers=[1, 2], **ROUND_2
    ),
    "20 ep: model-level (all layers), straight-through + drop-upcycling 0.5": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, **ROUND_2
    ),
    "20 ep: renormalize + drop-upcycling 0.5": variant("renormalize", **ROUND_2),
    "20 ep: switch + drop-upcycling 0.5": variant("switch", **ROUND_2),
    # Round 4, at the demo's training-set size: the routing units, and a second seed of the expert initialisation.
    "demo size: token, straight-through + drop-upcycling 0.5": variant(STRAIGHT_THROUGH, **ROUND_2),
    "demo size: token, straight-through + drop-upcycling 0.5, init seed 1": variant(
        STRAIGHT_THROUGH, expert_init_seed=1, **ROUND_2
    ),
    "demo size: frame, straight-through + drop-upcycling 0.5": variant(
        STRAIGHT_THROUGH, router_granularity="frame", **ROUND_2
    ),
    "demo size: model-level (all layers), straight-through + drop-upcycling 0.5": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, **ROUND_2
    ),
    "demo size: model-level (layers 1-2), straight-through + drop-upcycling 0.5": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, moe_layers=[1, 2], **ROUND_2
    ),
    "demo size: token, renormalize + drop-upcycling 0.5": variant("renormalize", **ROUND_2),
    # Round 5: routers initialised from k-means clusters of their inputs (`cluster_routers`).
    "demo size: token, straight-through + drop-upcycling 0.5, clustered routers": variant(
        STRAIGHT_THROUGH, cluster=True, **ROUND_2
    ),
    "demo size: model-level (all layers), straight-through + drop-upcycling 0.5, clustered routers": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, cluster=True, **ROUND_2
    ),
    "demo size: token, straight-through + drop-upcycling 1.0, clustered routers": variant(
        STRAIGHT_THROUGH, expert_init_ratio=1.0, cluster=True, **ROUND_2
    ),
    "demo size: token, straight-through + drop-upcycling 0.5, clustered routers, no balance loss": variant(
        STRAIGHT_THROUGH, router_aux_loss_coef=0.0, cluster=True, **ROUND_2
    ),
    # Round 6: a shorter dense phase; the last two rows are controls for the clustered routers.
    "dense phase varied: token, straight-through + drop-upcycling 0.5": variant(STRAIGHT_THROUGH, **ROUND_2),
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5, clustered routers": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, cluster=True, **ROUND_2
    ),
    "dense phase varied: token, straight-through + drop-upcycling 0.5, mixture 30 ep": variant(
        STRAIGHT_THROUGH, **MIXTURE_30
    ),
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5, clustered routers, mixture "
    "30 ep": variant(STRAIGHT_THROUGH, **MODEL_LEVEL, cluster=True, **MIXTURE_30),
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, **ROUND_2
    ),
    "dense phase varied: token, straight-through + drop-upcycling 0.5, clustered routers": variant(
        STRAIGHT_THROUGH, cluster=True, **ROUND_2
    ),
    # Round 9, seeds 0-2: the demo's mixture without clustered routers.
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5, mixture 30 ep": variant(
        STRAIGHT_THROUGH, **MODEL_LEVEL, **MIXTURE_30
    ),
    # Rounds 11-12, seeds 0-2: weaker balance losses than the config's 0.01.
    "round 11: model-level clustered mixture 30 ep, balance loss 0.001": demo_mixture(0.001),
    "round 11: model-level clustered mixture 30 ep, no balance loss": demo_mixture(0.0),
    "round 12: model-level clustered mixture 30 ep, balance loss 0.003": demo_mixture(0.003),
    "round 12: model-level clustered mixture 30 ep, balance loss 0.005": demo_mixture(0.005),
    # Round 15, TimeSformer-MoE only (dense phase 20 or 40 epochs by output folder): the mixture phase varied.
    **{
        f"timesformer: model-level clustered mixture {epochs} ep, lr {lr:g}, balance 0.005": demo_mixture(
            0.005, epochs, lr
        )
        for epochs, lr in ((30, 1e-3), (60, 1e-3), (30, 2e-3), (60, 5e-4))
    },
    # Round 16, TimeSformer-MoE, dense phase of 40 epochs: round 15's best recipe with a stronger balance loss.
    **{
        f"timesformer: round 16: model-level clustered mixture 60 ep, lr 0.001, balance {weight:g}": demo_mixture(
            weight, 60
        )
        for weight in (0.01, 0.02)
    },
}


def at_variant(moe_epochs: int, method: str, learning_rate: float = 5e-4, **options) -> dict:
    """A variant of ``--stage at``: the mixture (``moe_epochs`` at 1e-3; ``router_granularity``, ``cluster``,
    ``router_aux_loss_coef``), then 5 epochs of ``method`` at ``learning_rate`` with ``train_args``."""
    return {"moe_epochs": moe_epochs, "method": method, "learning_rate": learning_rate, **options}


CLUSTERED = dict(**MODEL_LEVEL, cluster=True)
BALANCE_0005 = dict(**CLUSTERED, router_aux_loss_coef=0.005)
ONE_LAMBDA = dict(lipschitz_weight=1e-5, expert_lipschitz_weight=1e-5, router_lipschitz_weight=1e-5)

# label -> the variant's options, in the order of their result files (at_<position>.json); with --shard i/2 each
# process builds one mixture.
AT_VARIANTS = {
    # Round 3: the learning rate and the mixture phase's length.
    "mixture 20 ep -> PGD-AT lr 5e-4 (demo)": at_variant(20, "pgd-at"),
    "mixture 30 ep -> PGD-AT lr 5e-4": at_variant(30, "pgd-at"),
    "mixture 20 ep -> J-TLAT lr 5e-4 (demo)": at_variant(20, "j-tlat"),
    "mixture 30 ep -> J-TLAT lr 5e-4": at_variant(30, "j-tlat"),
    "mixture 20 ep -> PGD-AT lr 2e-4": at_variant(20, "pgd-at", 2e-4),
    # Round 7: round 6's two mixtures (token, or model-level with clustered routers) adversarially fine-tuned.
    "dense 20 ep, model-level clustered mixture 20 ep -> PGD-AT lr 5e-4": at_variant(20, "pgd-at", **CLUSTERED),
    "dense 20 ep, token mixture 20 ep -> PGD-AT lr 5e-4": at_variant(20, "pgd-at"),
    "dense 20 ep, model-level clustered mixture 20 ep -> J-TLAT lr 5e-4": at_variant(20, "j-tlat", **CLUSTERED),
    "dense 20 ep, token mixture 20 ep -> J-TLAT lr 5e-4": at_variant(20, "j-tlat"),
    # Round 8: a longer mixture phase (also run with --seed 1).
    "dense 20 ep, model-level clustered mixture 30 ep -> PGD-AT lr 5e-4": at_variant(30, "pgd-at", **CLUSTERED),
    "dense 20 ep, model-level clustered mixture 30 ep -> J-TLAT lr 5e-4": at_variant(30, "j-tlat", **CLUSTERED),
    # Round 10: J-TLAT's training settings, judged on validation robustness.
    "round 10: PGD-AT (reference)": at_variant(30, "pgd-at", **CLUSTERED),
    "round 10: J-TLAT, calibrated λ per component, normalized step (new defaults)": at_variant(
        30, "j-tlat", **CLUSTERED
    ),
    "round 10: J-TLAT, one λ = 1e-5, published step (old defaults but the fixed denominator)": at_variant(
        30, "j-tlat", **CLUSTERED, train_args=dict(**ONE_LAMBDA, temporal_step="published")
    ),
    "round 10: J-TLAT, one λ = 1e-5, normalized step": at_variant(
        30, "j-tlat", **CLUSTERED, train_args=dict(**ONE_LAMBDA)
    ),
    "round 10: J-TLAT, calibrated λ per component, published step": at_variant(
        30, "j-tlat", **CLUSTERED, train_args=dict(temporal_step="published")
    ),
    "round 10: J-TLAT, new defaults, soft router target": at_variant(
        30, "j-tlat", **CLUSTERED, train_args=dict(jtlat_router_target="soft")
    ),
    # Round 13, seeds 0-2: both defenses on the mixture with balance weight 0.005.
    "round 13: balance 0.005 -> PGD-AT": at_variant(30, "pgd-at", **BALANCE_0005),
    "round 13: balance 0.005 -> J-TLAT": at_variant(30, "j-tlat", **BALANCE_0005),
    # Round 14, seed 1: which part of J-TLAT loses its clean accuracy there.
    "round 14: balance 0.005 -> J-TLAT without Lipschitz terms": at_variant(
        30,
        "j-tlat",
        **BALANCE_0005,
        train_args=dict(lipschitz_weight=0.0, expert_lipschitz_weight=0.0, router_lipschitz_weight=0.0),
    ),
    "round 14: balance 0.005 -> J-TLAT, model step only": at_variant(
        30, "j-tlat", **BALANCE_0005, train_args=dict(jtlat_steps=["model"])
    ),
    "round 14: balance 0.005 -> J-TLAT, model step only, on PGD examples": at_variant(
        30, "j-tlat", **BALANCE_0005, train_args=dict(jtlat_steps=["model"], jtlat_model_attack="pgd")
    ),
}

TIMESFORMER_SEEDS = (0, 1, 2)
# Each TimeSformer round's recipes, (mixture label, dense epochs), fixed before the round ran.
TIMESFORMER_ROUNDS = {
    15: [
        (label, dense_epochs)
        for dense_epochs in (20, 40)
        for label in VARIANTS
        if label.startswith("timesformer: model-level")
    ],
    16: [(label, 40) for label in VARIANTS if label.startswith("timesformer: round 16:")],
}


def timesformer_passes(row: dict) -> bool:
    """One seed of a TimeSformer recipe (rounds 15-16): learned - random >= +5 points and >= 2 SE, every expert path
    serving >= 10 % of the validation clips."""
    after = row["after"]
    return (
        after["learned_minus_random"] >= 0.05
        and after["learned_minus_random"] >= 2 * after["learned_minus_random_se"]
        and min(row["path_share"]) >= 0.10
    )


def timesformer_verdicts(rows: list[dict], recipes: list[tuple[str, float]]) -> tuple[list[dict], dict | None]:
    """The rule of rounds 15-16, fixed before round 15 ran, applied to one round's rows (one per recipe and seed).

    ``recipes`` are the round's (mixture label, dense epochs). A recipe passes when on every seed of
    ``TIMESFORMER_SEEDS`` learned - random routing is >= +5 points and >= 2 standard errors and every expert path serves
    >= 10 % of the validation clips; it fails as soon as one seed misses, so its other seeds need not run. Once every
    recipe has failed or run all its seeds, the highest mean validation clean accuracy among those that pass wins, and a
    cheaper recipe (fewer dense + mixture epochs) within one standard error of the winner's mean (the standard
    deviation over seeds / sqrt(seeds)) wins instead. Returns one summary per recipe and the chosen one (None while
    none is chosen).
    """
    recipes = {
        (label, dense_epochs): {
            "label": label,
            "dense_epochs": dense_epochs,
            "epochs": VARIANTS[label]["epochs"],
            "seeds": {},
        }
        for label, dense_epochs in recipes
    }
    sources = {}
    for row in rows:
        key, where = (row["label"], row["dense"]["epochs"]), row.get("path", "a row")
        if key not in recipes:
            raise ValueError(
                f"{where}: {row['label']!r} after {row['dense']['epochs']:g} dense epochs is not one of "
                "this round's recipes"
            )
        if row["seed"] not in TIMESFORMER_SEEDS or row["dense"].get("seed") != row["seed"]:
            raise ValueError(
                f"{where}: seed {row['seed']} on the dense phase of seed {row['dense'].get('seed')}; "
                f"the rounds run seeds {TIMESFORMER_SEEDS}, each on its own dense phase"
            )
        if "path_share" not in row:
            raise ValueError(f"{where}: no path_share (the rule needs every expert path's share of the clips)")
        if (key, row["seed"]) in sources:
            raise ValueError(
                f"two rows for {row['label']!r}, {row['dense']['epochs']:g} dense epochs, seed "
                f"{row['seed']}: {sources[key, row['seed']]} and {where}; remove one"
            )
        sources[key, row["seed"]] = where
        recipes[key]["seeds"][row["seed"]] = {"clean": row["after"]["learned"], "passes": timesformer_passes(row)}
    for recipe in recipes.values():
        seeds = recipe["seeds"]
        failed = [seed for seed in sorted(seeds) if not seeds[seed]["passes"]]
        missing = [seed for seed in TIMESFORMER_SEEDS if seed not in seeds]
        if failed:
            recipe["verdict"] = "fails on seed " + ", ".join(map(str, failed))
        elif not seeds:
            recipe["verdict"] = "not run"
        elif missing:
            recipe["verdict"] = f"passes so far; seed{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} to run"
        else:
            recipe["verdict"] = "passes"
        cleans = [seeds[seed]["clean"] for seed in sorted(seeds)]
        recipe["clean"] = sum(cleans) / len(cleans) if cleans else None
        recipe["clean_se"] = (float(torch.tensor(cleans).std()) / len(cleans) ** 0.5) if len(cleans) > 1 else None
    summaries = list(recipes.values())
    if any(recipe["verdict"] == "not run" or recipe["verdict"].startswith("passes so far") for recipe in summaries):
        return summaries, None  # a recipe still to run could win
    passing = [recipe for recipe in summaries if recipe["verdict"] == "passes"]
    if not passing:
        return summaries, None
    best = max(passing, key=lambda recipe: recipe["clean"])
    near = [recipe for recipe in passing if recipe["clean"] >= best["clean"] - best["clean_se"]]
    return summaries, min(near, key=lambda recipe: (recipe["dense_epochs"] + recipe["epochs"], -recipe["clean"]))
