"""Which recipe gives a mixture whose routing matters? Trains mixtures and scores them on a validation split.

MovingShapes (easy, 8 x 32 x 32, the demo's data, ``--seed``); the last 20 % of the train split is a validation split
and every number is measured on it (the test split is not touched). ``--stage dense`` trains one dense model;
``--stage variants`` upcycles it to 4 experts at top-1 once per selected variant (``VARIANTS``) and fine-tunes the
mixture without attacks; ``--stage at`` adds adversarial fine-tuning (``AT_VARIANTS``) and scores validation
robustness; ``--stage report`` writes docs/routing_relevance.md (or, with ``--model-type timesformer``,
docs/routing_relevance_timesformer.md). Primary endpoint: learned-routing minus random-routing clean accuracy (paired
over clips, with its standard error); secondary: the spread between the best and the worst forced expert path, and
how far the experts' weights are apart.

    python scripts/routing_relevance.py --stage dense                    # ~3 min on one core
    python scripts/routing_relevance.py --stage variants --shard 0/2 &   # the variants, two processes
    python scripts/routing_relevance.py --stage variants --shard 1/2

Variants are grouped, and labelled, by the round of experiments they ran in; ``--select`` picks them by a part of
their label (``--select "round 13"``). What each round asked and found, and the command for each, are in
docs/history.md.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, VideoMAEConfig, VideoMAEForVideoClassification

from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.data import VideoCollator, make_moving_shapes, stack_pixel_values
from hf_videomoe.evaluation.paired_tests import mcnemar_exact
from hf_videomoe.moe import cluster_routers, expert_load, moe_blocks, routing_relevance
from hf_videomoe.reproduction.recipes import (
    NormalizingCollator,
    Settings,
    build_dense,
    fold_input_normalization,
    model_classes,
)

# What a folder or row of rounds 1-14 holds: those ran before records named the backbone, and all were VideoMAE.
LEGACY_DENSE_RECORD = {"model_type": "videomae"}

# label -> from_dense / config options, plus "epochs" / "learning_rate" of the MoE phase (defaults: --moe-epochs, 5e-4).
# Grouped by round (docs/history.md). Rounds 1-2: the gate and the expert initialisation, then a longer MoE phase and
# model-level routing whose router reads the output of a dense first layer (moe_layers=[1, 2]).
ROUND_2 = dict(epochs=20, learning_rate=1e-3)

VARIANTS = {
    "renormalize + copy (old default)": dict(router_gate="renormalize", expert_init="copy"),
    "straight-through + copy": dict(router_gate="straight_through", expert_init="copy"),
    "switch + copy": dict(router_gate="switch", expert_init="copy"),
    "straight-through + drop-upcycling 0.5": dict(router_gate="straight_through", expert_init="drop_upcycling"),
    "switch + drop-upcycling 0.5": dict(router_gate="switch", expert_init="drop_upcycling"),
    "renormalize + drop-upcycling 0.5": dict(router_gate="renormalize", expert_init="drop_upcycling"),
    "model-level, straight-through + copy": dict(
        router_gate="straight_through", expert_init="copy", router_granularity="model"
    ),
    "model-level, straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", router_granularity="model"
    ),
    "model-level, renormalize + drop-upcycling 0.5": dict(
        router_gate="renormalize", expert_init="drop_upcycling", router_granularity="model"
    ),
    # Round 2.
    "20 ep: renormalize + copy": dict(router_gate="renormalize", expert_init="copy", **ROUND_2),
    "20 ep: straight-through + copy": dict(router_gate="straight_through", expert_init="copy", **ROUND_2),
    "20 ep: straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", **ROUND_2
    ),
    "20 ep: model-level (layers 1-2), straight-through + copy": dict(
        router_gate="straight_through", expert_init="copy", router_granularity="model", moe_layers=[1, 2], **ROUND_2
    ),
    "20 ep: model-level (layers 1-2), straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        moe_layers=[1, 2],
        **ROUND_2,
    ),
    "20 ep: model-level (layers 1-2), renormalize + drop-upcycling 0.5": dict(
        router_gate="renormalize",
        expert_init="drop_upcycling",
        router_granularity="model",
        moe_layers=[1, 2],
        **ROUND_2,
    ),
    "20 ep: model-level (layers 1-2), straight-through + drop-upcycling 1.0": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        expert_init_ratio=1.0,
        router_granularity="model",
        moe_layers=[1, 2],
        **ROUND_2,
    ),
    "20 ep: model-level (all layers), straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", router_granularity="model", **ROUND_2
    ),
    "20 ep: renormalize + drop-upcycling 0.5": dict(router_gate="renormalize", expert_init="drop_upcycling", **ROUND_2),
    "20 ep: switch + drop-upcycling 0.5": dict(router_gate="switch", expert_init="drop_upcycling", **ROUND_2),
    # Round 4, at the demo's training-set size: the routing units, and a second seed of the expert initialisation.
    "demo size: token, straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", **ROUND_2
    ),
    "demo size: token, straight-through + drop-upcycling 0.5, init seed 1": dict(
        router_gate="straight_through", expert_init="drop_upcycling", expert_init_seed=1, **ROUND_2
    ),
    "demo size: frame, straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", router_granularity="frame", **ROUND_2
    ),
    "demo size: model-level (all layers), straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", router_granularity="model", **ROUND_2
    ),
    "demo size: model-level (layers 1-2), straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        moe_layers=[1, 2],
        **ROUND_2,
    ),
    "demo size: token, renormalize + drop-upcycling 0.5": dict(
        router_gate="renormalize", expert_init="drop_upcycling", **ROUND_2
    ),
    # Round 5: routers initialised from k-means clusters of their inputs (`cluster_routers`).
    "demo size: token, straight-through + drop-upcycling 0.5, clustered routers": dict(
        router_gate="straight_through", expert_init="drop_upcycling", cluster=True, **ROUND_2
    ),
    "demo size: model-level (all layers), straight-through + drop-upcycling 0.5, clustered routers": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        **ROUND_2,
    ),
    "demo size: token, straight-through + drop-upcycling 1.0, clustered routers": dict(
        router_gate="straight_through", expert_init="drop_upcycling", expert_init_ratio=1.0, cluster=True, **ROUND_2
    ),
    "demo size: token, straight-through + drop-upcycling 0.5, clustered routers, no balance loss": dict(
        router_gate="straight_through", expert_init="drop_upcycling", router_aux_loss_coef=0.0, cluster=True, **ROUND_2
    ),
    # Round 6: a shorter dense phase (--dense-epochs, output folder rr_d10 / rr_d15 / rr_d20).
    "dense phase varied: token, straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", **ROUND_2
    ),
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5, clustered routers": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        **ROUND_2,
    ),
    "dense phase varied: token, straight-through + drop-upcycling 0.5, mixture 30 ep": dict(
        router_gate="straight_through", expert_init="drop_upcycling", epochs=30, learning_rate=1e-3
    ),
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5, clustered routers, mixture 30 ep": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        epochs=30,
        learning_rate=1e-3,
    ),  # Controls for the clustered routers, same dense phase.
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5": dict(
        router_gate="straight_through", expert_init="drop_upcycling", router_granularity="model", **ROUND_2
    ),
    "dense phase varied: token, straight-through + drop-upcycling 0.5, clustered routers": dict(
        router_gate="straight_through", expert_init="drop_upcycling", cluster=True, **ROUND_2
    ),
    # Round 9, seeds 0-2: the demo's mixture without clustered routers.
    "dense phase varied: model-level (all layers), straight-through + drop-upcycling 0.5, mixture 30 ep": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        epochs=30,
        learning_rate=1e-3,
    ),
    # Rounds 11-12, seeds 0-2: weaker balance losses than the config's 0.01 (the rule they were judged by:
    # docs/history.md).
    "round 11: model-level clustered mixture 30 ep, balance loss 0.001": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.001,
        epochs=30,
        learning_rate=1e-3,
    ),
    "round 11: model-level clustered mixture 30 ep, no balance loss": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.0,
        epochs=30,
        learning_rate=1e-3,
    ),
    "round 12: model-level clustered mixture 30 ep, balance loss 0.003": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.003,
        epochs=30,
        learning_rate=1e-3,
    ),
    "round 12: model-level clustered mixture 30 ep, balance loss 0.005": dict(
        router_gate="straight_through",
        expert_init="drop_upcycling",
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.005,
        epochs=30,
        learning_rate=1e-3,
    ),
    # Round 15, TimeSformer-MoE only (--model-type timesformer, dense phase 20 or 40 epochs by output folder): the
    # demo's recipe with the mixture phase's length and learning rate varied; judged by `timesformer_verdicts`.
    **{
        f"timesformer: model-level clustered mixture {epochs} ep, lr {lr:g}, balance 0.005": dict(
            router_gate="straight_through",
            expert_init="drop_upcycling",
            router_granularity="model",
            cluster=True,
            router_aux_loss_coef=0.005,
            epochs=epochs,
            learning_rate=lr,
        )
        for epochs, lr in ((30, 1e-3), (60, 1e-3), (30, 2e-3), (60, 5e-4))
    },
    # Round 16, TimeSformer-MoE, dense phase of 40 epochs: round 15's best recipe with a stronger balance loss; it
    # counts only if round 15 chose nothing (`timesformer_verdicts`).
    **{
        f"timesformer: round 16: model-level clustered mixture 60 ep, lr 0.001, balance {weight:g}": dict(
            router_gate="straight_through",
            expert_init="drop_upcycling",
            router_granularity="model",
            cluster=True,
            router_aux_loss_coef=weight,
            epochs=60,
            learning_rate=1e-3,
        )
        for weight in (0.01, 0.02)
    },
}


def training_arguments(output_dir: Path, epochs: float, learning_rate: float, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=learning_rate,
        weight_decay=0.05,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        seed=seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
    )


def splits(args):
    data = make_moving_shapes(args.num_videos, num_frames=8, image_size=32, seed=args.seed, difficulty="easy")
    train = data["train"]
    num_val = len(train) // 5
    return train.select(range(len(train) - num_val)), train.select(range(len(train) - num_val, len(train)))


@torch.no_grad()
def path_shares(model, pixel_values, batch_size: int = 64) -> list[float]:
    """Model-level routing: the fraction of clips each expert path receives under the learned routing (the first MoE
    layer's router makes the one decision per clip that every layer follows)."""
    model.eval()
    load = torch.zeros(model.config.num_experts)
    for start in range(0, len(pixel_values), batch_size):
        outputs = model(pixel_values=pixel_values[start : start + batch_size], output_router_logits=True)
        load += expert_load(outputs.router_logits[0], model.config.num_experts_per_tok)
    return (load / load.sum()).tolist()


def expert_distance(model) -> float:
    """Mean over MoE layers of the relative distance of each expert's up-projection from the experts' mean."""
    values = []
    for block in moe_blocks(model):
        up = block.experts.up_proj.detach()
        mean = up.mean(dim=0, keepdim=True)
        values.append(float((up - mean).norm() / mean.expand_as(up).norm()))
    return sum(values) / len(values)


def stage_dense(args, out: Path):
    train, _ = splits(args)
    label_names = train.features["labels"].names
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    if args.model_type == "videomae":  # rounds 1-14, kept as they ran
        dense = VideoMAEForVideoClassification(
            VideoMAEConfig(
                image_size=32,
                patch_size=8,
                num_frames=8,
                tubelet_size=2,
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=256,
                num_labels=len(label_names),
            )
        )
        collator = VideoCollator()
    else:  # the reproduction's dense model (its sizes, time embeddings) and input normalisation, this script's schedule
        dense = build_dense(Settings(model_type=args.model_type, num_frames=8, image_size=32), label_names)
        collator = NormalizingCollator(VideoCollator())
    Trainer(
        model=dense,
        args=training_arguments(out / "dense", args.dense_epochs, 2e-3, args.seed),
        train_dataset=train,
        data_collator=collator,
    ).train()
    if args.model_type != "videomae":
        fold_input_normalization(dense)  # a plain checkpoint that takes [0, 1] pixels, as the variants feed it
    seconds = time.perf_counter() - start
    dense.save_pretrained(out / "dense")
    # What the variants start from, recorded with each of them (the folder name alone does not say it).
    (out / "dense" / "train.json").write_text(
        json.dumps({"model_type": args.model_type, "epochs": args.dense_epochs, "seconds": seconds, "seed": args.seed})
    )
    print(f"dense trained in {seconds:.0f}s")


def dense_record(out: Path, model_type: str) -> dict:
    """What ``--stage dense`` recorded in ``out`` (rounds 1-14's folders have no record: VideoMAE), checked against
    ``--model-type`` so that one backbone's checkpoint is never loaded as the other's."""
    path = out / "dense" / "train.json"
    record = json.loads(path.read_text()) if path.exists() else dict(LEGACY_DENSE_RECORD)
    if record["model_type"] != model_type:
        raise SystemExit(f"{out / 'dense'} holds a {record['model_type']} model, not --model-type {model_type}")
    return record


def stage_variants(args, out: Path):
    train, val = splits(args)
    val_x = torch.stack([torch.as_tensor(v) for v in val.with_format("torch")["pixel_values"]])
    val_y = torch.as_tensor(val["labels"])
    index, count = (int(v) for v in args.shard.split("/"))
    # Round 15's variants are TimeSformer's, every other round's VideoMAE's: a variant runs only on its own model.
    selected = [
        (position, label, options)
        for position, (label, options) in enumerate(VARIANTS.items())
        if args.select in label and label.startswith("timesformer:") == (args.model_type == "timesformer")
    ]
    if not selected:
        raise SystemExit(f"no {args.model_type} variant matches --select {args.select!r}")
    _, dense_cls, moe_cls = model_classes(args.model_type)
    dense_phase = dense_record(out, args.model_type)
    if dense_phase.get("seed", args.seed) != args.seed:  # rounds 1-14's folders do not record their seed
        raise SystemExit(f"{out / 'dense'} was trained with seed {dense_phase['seed']}, not --seed {args.seed}")
    for rank, (position, label, options) in enumerate(selected):
        if rank % count != index:
            continue
        path = out / f"variant_{position}.json"
        if path.exists():
            # A row is kept only if it grew from this dense phase: after retraining `dense`, old rows would be stale.
            if json.loads(path.read_text()).get("dense", LEGACY_DENSE_RECORD) != dense_phase:
                raise SystemExit(f"{path} was measured on another dense phase than {out / 'dense'}: remove it")
            continue
        options = dict(options)
        epochs = options.pop("epochs", args.moe_epochs)
        learning_rate = options.pop("learning_rate", 5e-4)
        cluster = options.pop("cluster", False)
        torch.manual_seed(args.seed)
        moe = moe_cls.from_dense(
            dense_cls.from_pretrained(out / "dense"),
            num_experts=4,
            num_experts_per_tok=1,
            image_mean=[0.0] * 3,
            image_std=[1.0] * 3,
            **options,
        )
        if cluster:
            options["cluster_routers"] = cluster_routers(moe, stack_pixel_values(train, 512), seed=args.seed)
        before = routing_relevance(moe, val_x, val_y, seed=args.seed)
        start = time.perf_counter()
        Trainer(
            model=moe.train(),
            args=training_arguments(out / "moe", epochs, learning_rate, args.seed),
            train_dataset=train,
            data_collator=VideoCollator(),
        ).train()
        seconds = time.perf_counter() - start
        after = routing_relevance(moe, val_x, val_y, seed=args.seed)
        result = {
            "label": label,
            "seed": args.seed,
            "model_type": args.model_type,
            "options": options,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "dense": dense_phase,
            "before": before,
            "after": after,
            "train_seconds": seconds,
            "expert_distance": expert_distance(moe),
        }
        if moe.config.router_granularity == "model":
            result["path_share"] = path_shares(moe, val_x)
        path.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: result[k] for k in ("label", "after", "expert_distance")}))


# Adversarial fine-tuning (5 epochs of 2-step attacks at 4/255) on top of a mixture phase; grouped by round
# (docs/history.md). Round 3: the learning rate and the mixture phase's length.
AT_VARIANTS = {  # ordered so that with --shard i/2 each process builds one mixture
    "mixture 20 ep -> PGD-AT lr 5e-4 (demo)": dict(moe_epochs=20, method="pgd-at", learning_rate=5e-4),
    "mixture 30 ep -> PGD-AT lr 5e-4": dict(moe_epochs=30, method="pgd-at", learning_rate=5e-4),
    "mixture 20 ep -> J-TLAT lr 5e-4 (demo)": dict(moe_epochs=20, method="j-tlat", learning_rate=5e-4),
    "mixture 30 ep -> J-TLAT lr 5e-4": dict(moe_epochs=30, method="j-tlat", learning_rate=5e-4),
    "mixture 20 ep -> PGD-AT lr 2e-4": dict(moe_epochs=20, method="pgd-at", learning_rate=2e-4),
    # Round 7: round 6's two mixtures (token, or model-level with clustered routers) adversarially fine-tuned.
    # Ordered so that with --shard i/2 one process builds each mixture.
    "dense 20 ep, model-level clustered mixture 20 ep -> PGD-AT lr 5e-4": dict(
        moe_epochs=20, method="pgd-at", learning_rate=5e-4, router_granularity="model", cluster=True
    ),
    "dense 20 ep, token mixture 20 ep -> PGD-AT lr 5e-4": dict(moe_epochs=20, method="pgd-at", learning_rate=5e-4),
    "dense 20 ep, model-level clustered mixture 20 ep -> J-TLAT lr 5e-4": dict(
        moe_epochs=20, method="j-tlat", learning_rate=5e-4, router_granularity="model", cluster=True
    ),
    "dense 20 ep, token mixture 20 ep -> J-TLAT lr 5e-4": dict(moe_epochs=20, method="j-tlat", learning_rate=5e-4),
    # Round 8: a longer mixture phase (also run with --seed 1).
    "dense 20 ep, model-level clustered mixture 30 ep -> PGD-AT lr 5e-4": dict(
        moe_epochs=30, method="pgd-at", learning_rate=5e-4, router_granularity="model", cluster=True
    ),
    "dense 20 ep, model-level clustered mixture 30 ep -> J-TLAT lr 5e-4": dict(
        moe_epochs=30, method="j-tlat", learning_rate=5e-4, router_granularity="model", cluster=True
    ),
    # Round 10: J-TLAT's training settings, judged on validation robustness (`validation_robustness`).
    "round 10: PGD-AT (reference)": dict(
        moe_epochs=30, method="pgd-at", learning_rate=5e-4, router_granularity="model", cluster=True
    ),
    "round 10: J-TLAT, calibrated λ per component, normalized step (new defaults)": dict(
        moe_epochs=30, method="j-tlat", learning_rate=5e-4, router_granularity="model", cluster=True
    ),
    # The training arguments have no Lipschitz-denominator option (their attacks use the fixed one), so this row is the
    # old defaults but for the denominator, which changes nothing measurable at these λ (docs/attack_defaults.md).
    "round 10: J-TLAT, one λ = 1e-5, published step (old defaults but the fixed denominator)": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        train_args=dict(
            lipschitz_weight=1e-5, expert_lipschitz_weight=1e-5, router_lipschitz_weight=1e-5, temporal_step="published"
        ),
    ),
    "round 10: J-TLAT, one λ = 1e-5, normalized step": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        train_args=dict(lipschitz_weight=1e-5, expert_lipschitz_weight=1e-5, router_lipschitz_weight=1e-5),
    ),
    "round 10: J-TLAT, calibrated λ per component, published step": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        train_args=dict(temporal_step="published"),
    ),
    "round 10: J-TLAT, new defaults, soft router target": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        train_args=dict(jtlat_router_target="soft"),
    ),
    # Round 13, seeds 0-2: both defenses on the mixture with balance weight 0.005 (nothing chosen from it).
    "round 13: balance 0.005 -> PGD-AT": dict(
        moe_epochs=30,
        method="pgd-at",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.005,
    ),
    "round 13: balance 0.005 -> J-TLAT": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.005,
    ),
    # Round 14, seed 1: which part of J-TLAT loses its clean accuracy there (a diagnostic, nothing chosen from it).
    "round 14: balance 0.005 -> J-TLAT without Lipschitz terms": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.005,
        train_args=dict(lipschitz_weight=0.0, expert_lipschitz_weight=0.0, router_lipschitz_weight=0.0),
    ),
    "round 14: balance 0.005 -> J-TLAT, model step only": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.005,
        train_args=dict(jtlat_steps=["model"]),
    ),
    "round 14: balance 0.005 -> J-TLAT, model step only, on PGD examples": dict(
        moe_epochs=30,
        method="j-tlat",
        learning_rate=5e-4,
        router_granularity="model",
        cluster=True,
        router_aux_loss_coef=0.005,
        train_args=dict(jtlat_steps=["model"], jtlat_model_attack="pgd"),
    ),
}


def validation_robustness(model, val_x, val_y) -> dict:
    """PGD and J-TLAT's attack J-TLGA (10 steps, 4/255, library defaults) on the validation clips: robust accuracy of
    each and of the per-clip worst of the two, with its standard error."""
    from hf_videomoe.attacks import build_attack

    model.eval()
    correct = {}
    with torch.no_grad():
        clean = torch.cat([model(pixel_values=val_x[i : i + 64]).logits.argmax(-1) for i in range(0, len(val_y), 64)])
    for name in ("pgd", "j-tlga"):
        attack = build_attack(name, eps=4 / 255, steps=10, seed=0)
        preds = []
        for i in range(0, len(val_y), 64):
            adv = attack.perturb(model, val_x[i : i + 64], val_y[i : i + 64])
            with torch.no_grad():
                preds.append(model(pixel_values=adv).logits.argmax(-1))
        correct[name] = (torch.cat(preds) == val_y) & (clean == val_y)
    worst = correct["pgd"] & correct["j-tlga"]
    n = len(val_y)
    p = worst.float().mean().item()
    return {
        "pgd": correct["pgd"].float().mean().item(),
        "j-tlga": correct["j-tlga"].float().mean().item(),
        "worst": p,
        "worst_se": (p * (1 - p) / n) ** 0.5,
        "worst_correct": worst.tolist(),
    }


def mixture(
    args,
    out: Path,
    epochs: int,
    train,
    router_granularity: str = "token",
    cluster: bool = False,
    router_aux_loss_coef: float = 0.01,
):
    """A mixture with the straight-through gate and Drop-Upcycling 0.5, trained ``epochs`` at 1e-3, cached on disk."""
    path = (
        out / f"mixture_{epochs}"
        if router_granularity == "token" and not cluster
        else (out / f"mixture_{epochs}_{router_granularity}{'_clustered' if cluster else ''}")
    )
    if router_aux_loss_coef != 0.01:
        path = path.with_name(f"{path.name}_aux{router_aux_loss_coef:g}")
    if (path / "config.json").exists():
        return VideoMAEMoeForVideoClassification.from_pretrained(path)
    dense_record(out, "videomae")
    torch.manual_seed(args.seed)
    dense = VideoMAEForVideoClassification.from_pretrained(out / "dense")
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense,
        num_experts=4,
        num_experts_per_tok=1,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        expert_init="drop_upcycling",
        expert_init_seed=args.seed,
        router_granularity=router_granularity,
        router_aux_loss_coef=router_aux_loss_coef,
    )
    if cluster:
        cluster_routers(moe, stack_pixel_values(train, 512), seed=args.seed)
    Trainer(
        model=moe.train(),
        args=training_arguments(out / "moe", epochs, 1e-3, args.seed),
        train_dataset=train,
        data_collator=VideoCollator(),
    ).train()
    moe.save_pretrained(path)
    return moe


def stage_at(args, out: Path):
    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer

    train, val = splits(args)
    val_x = torch.stack([torch.as_tensor(v) for v in val.with_format("torch")["pixel_values"]])
    val_y = torch.as_tensor(val["labels"])
    index, count = (int(v) for v in args.shard.split("/"))
    for position, (label, options) in enumerate(AT_VARIANTS.items()):
        path = out / f"at_{position}.json"
        if position % count != index or path.exists() or args.select not in label:
            continue
        moe = mixture(
            args,
            out,
            options["moe_epochs"],
            train,
            options.get("router_granularity", "token"),
            options.get("cluster", False),
            options.get("router_aux_loss_coef", 0.01),
        )
        before = routing_relevance(moe, val_x, val_y, seed=args.seed)
        at_args = AdversarialTrainingArguments(
            output_dir=str(out / "at"),
            adv_method=options["method"],
            adv_eps=4 / 255,
            adv_steps=2,
            num_train_epochs=5,
            per_device_train_batch_size=32,
            learning_rate=options["learning_rate"],
            weight_decay=0.05,
            warmup_steps=10,
            lr_scheduler_type="cosine",
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            seed=args.seed,
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            **options.get("train_args", {}),
        )
        trainer_cls = JTLATTrainer if options["method"] == "j-tlat" else AdversarialTrainer
        start = time.perf_counter()
        trainer_cls(model=moe.train(), args=at_args, train_dataset=train, data_collator=VideoCollator()).train()
        seconds = time.perf_counter() - start
        after = routing_relevance(moe, val_x, val_y, seed=args.seed)
        result = {
            "label": label,
            "options": options,
            "before": before,
            "after": after,
            "train_seconds": seconds,
            "expert_distance": expert_distance(moe),
            "seed": args.seed,
        }
        if label.startswith(("round 10", "round 13", "round 14")):
            result["robustness"] = validation_robustness(moe, val_x, val_y)
        path.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: result[k] for k in ("label", "after")}))


def robustness_cell(robustness: dict | None) -> str:
    if not robustness:
        return "–"
    return (
        f"{100 * robustness['pgd']:.1f} / {100 * robustness['j-tlga']:.1f} / "
        f"**{100 * robustness['worst']:.1f} ± {100 * robustness['worst_se']:.1f}**"
    )


def dense_epochs_of(folder: Path, default: float) -> float:
    """The dense phase of a round's output folder: ``outputs/rr_d20`` -> 20 (``--dense-epochs``), else the default."""
    match = re.search(r"_d(\d+)(_s\d+)?$", folder.name)
    return float(match.group(1)) if match else default


def seed_of(folder: Path, row: dict) -> int:
    """The seed of a round: recorded in the row, else from the folder name (``outputs/rr_d20_s1`` -> 1), else 0."""
    if row.get("seed") is not None:
        return int(row["seed"])
    match = re.search(r"_s(\d+)$", folder.name)
    return int(match.group(1)) if match else 0


def stage_report(args, out: Path):
    at_dir = Path(args.at_dir) if args.at_dir else out
    extra_dirs = [Path(folder) for folder in args.extra_dirs]
    labels = list(VARIANTS)
    rows = []
    for i in range(len(VARIANTS)):
        for folder in dict.fromkeys((out, at_dir, *extra_dirs)):
            if (folder / f"variant_{i}.json").exists():
                row = json.loads((folder / f"variant_{i}.json").read_text())
                if row.get("model_type", "videomae") != "videomae":  # TimeSformer rows (rounds 15-16): own page
                    continue
                row["label"], row["dense_epochs"] = labels[i], dense_epochs_of(folder, args.dense_epochs)
                row["seed"] = seed_of(folder, row)
                rows.append(row)
    lines = [
        "# Routing relevance: gate × expert initialisation",
        "",
        f"`python scripts/routing_relevance.py --stage dense|variants|report` (seed {args.seed}, "
        f"{args.num_videos} MovingShapes clips, dense VideoMAE trained {args.dense_epochs:g} epochs, upcycled to 4 "
        f"experts top-1 and fine-tuned without attacks for {args.moe_epochs:g} epochs at 5e-4, or 20 epochs at 1e-3 "
        "in the rows marked '20 ep'; every number on a validation split carved from train, {n} clips; the rows "
        "marked 'demo size' and 'dense phase varied' come from `--num-videos 3000` runs: 1,800 training clips like "
        "the demo's, 449 validation clips, with the dense phase in the second column; so do rounds 11-12). Learned − "
        "random is paired over clips (± one standard error); expert distance is the mean relative distance of each "
        "expert's up-projection from the experts' mean; smallest path share (model-level routing, recorded from "
        "round 11 on) is the fraction of validation clips the least used expert path receives under learned "
        "routing.".format(n=rows[0]["after"]["num_samples"] if rows else 0),
        "",
        "| variant | dense epochs | clean before fine-tuning | clean, learned routing | random routing | "
        "learned − random | forced paths 0 / 1 / 2 / 3 | best − worst path | expert distance | smallest path share |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        a = row["after"]
        forced = " / ".join(f"{100 * v:.1f}" for v in a["forced"])
        seed = f" (seed {row['seed']})" if row["seed"] else ""
        lines.append(
            f"| {row['label']}{seed} | {row['dense_epochs']:g} | {100 * row['before']['learned']:.1f} | "
            f"{100 * a['learned']:.1f} | "
            f"{100 * a['random']:.1f} | {100 * a['learned_minus_random']:+.1f} ± {100 * a['learned_minus_random_se']:.1f}"
            f" | {forced} | {100 * a['forced_spread']:.1f} | {row['expert_distance']:.3f} | "
            + (f"{100 * min(row['path_share']):.1f} % |" if "path_share" in row else "– |")
        )
    at_labels = list(AT_VARIANTS)
    at_rows = [
        {
            **json.loads((folder / f"at_{i}.json").read_text()),
            "label": at_labels[i],
            "dense_epochs": dense_epochs_of(folder, 30),
        }
        for i in range(len(AT_VARIANTS))
        for folder in dict.fromkeys((at_dir, *extra_dirs))
        if (folder / f"at_{i}.json").exists()
    ]
    if at_rows:
        lines += [
            "",
            "## Does adversarial fine-tuning keep the routing relevant?",
            "",
            "A mixture (straight-through gate, Drop-Upcycling 0.5, mixture phase of 20 or 30 epochs at 1e-3) followed "
            "by 5 epochs of adversarial training with 2-step attacks at ε = 4/255, at the demo's training-set size "
            f"(1,800 training clips, {at_rows[0]['after']['num_samples']} validation clips carved from train): "
            f"`--stage dense|at --num-videos 3000 --output-dir {at_dir.as_posix()}` (dense phase of 30 epochs) and "
            "`--output-dir outputs/rr_d20` (rows 'dense 20 ep').",
            "",
            "| recipe | dense epochs | learned − random before AT | clean after AT | random routing | "
            "learned − random | forced paths 0 / 1 / 2 / 3 | best − worst path | PGD / J-TLGA / worst of both "
            "(rounds 10, 13) |",
            "|---|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for row in at_rows:
            a, b = row["after"], row["before"]
            forced = " / ".join(f"{100 * v:.1f}" for v in a["forced"])
            seed = f" (seed {row['seed']})" if row.get("seed") else ""
            lines.append(
                f"| {row['label']}{seed} | {row['dense_epochs']:g} | "
                f"{100 * b['learned_minus_random']:+.1f} ± {100 * b['learned_minus_random_se']:.1f} | "
                f"{100 * a['learned']:.1f} | {100 * a['random']:.1f} | "
                f"{100 * a['learned_minus_random']:+.1f} ± {100 * a['learned_minus_random_se']:.1f} | {forced} | "
                f"{100 * a['forced_spread']:.1f} | {robustness_cell(row.get('robustness'))} |"
            )
        paired = {}
        for row in at_rows:
            if row["label"].startswith("round 13") and row.get("robustness"):
                paired.setdefault(row["seed"], {})[row["options"]["method"]] = row["robustness"]["worst_correct"]
        tests = [(seed, mcnemar_exact(p["j-tlat"], p["pgd-at"])) for seed, p in sorted(paired.items()) if len(p) == 2]
        if tests:
            lines += [
                "",
                "Round 13, J-TLAT against PGD-AT on the per-clip worst of PGD and J-TLGA (exact McNemar, "
                "two-sided): "
                + "; ".join(
                    f"seed {seed}: {t['a_only']} clips only J-TLAT keeps, {t['b_only']} only PGD-AT, "
                    f"p = {t['p_value']:.2g}"
                    for seed, t in tests
                )
                + ".",
            ]
    lines += [
        "",
        "What these numbers decided (the gate default, the demo's expert initialisation and mixture phase): "
        'docs/METHOD.md §1, "Measurement behind the defaults".',
    ]
    Path(args.docs).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


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


def stage_report_timesformer(args, out: Path):
    rows = []
    for folder in dict.fromkeys((out, *(Path(folder) for folder in args.extra_dirs))):
        if not folder.is_dir():
            print(f"note: {folder} does not exist, no rows from it")
        for path in sorted(folder.glob("variant_*.json")):
            row = json.loads(path.read_text())
            if row.get("model_type") == "timesformer":
                rows.append({**row, "path": path.as_posix()})
    if not rows:
        raise SystemExit(f"no TimeSformer rows in {out} or {' '.join(args.extra_dirs)}")
    lines = [
        "# Routing relevance of TimeSformer-MoE (rounds 15-16)",
        "",
        "`python scripts/routing_relevance.py --stage dense|variants --model-type timesformer --num-videos 3000 "
        "--dense-epochs 20|40 --seed 0|1|2 --output-dir outputs/rr_ts_d20|rr_ts_d40[_s1|_s2]`, then `--stage report "
        "--model-type timesformer`. Each row: the reproduction's dense TimeSformer (random time embeddings) trained "
        "for the dense phase, upcycled with the demo's mixture recipe (model-level clustered routers, Drop-Upcycling "
        "0.5, 4 experts top-1) and fine-tuned without attacks; every number on the validation split carved from "
        'train. Rule, fixed before round 15 ran (docs/PROTOCOL.md, "Schedule", step 5): a recipe passes when on each '
        "of seeds 0-2 learned - random >= +5 points and >= 2 standard errors and every expert path serves >= 10 % of "
        "the clips; once every recipe of a round has failed or run its seeds, the highest mean clean accuracy among "
        "passes is chosen, or a cheaper one (fewer dense + mixture epochs) within one standard error (over seeds) of "
        "it. Round 16 (a stronger balance loss on round 15's best row) was written after round 15 failed and counts "
        "only if round 15 chose nothing.",
        "",
        "| recipe | dense epochs | seed | clean, learned routing | random routing | learned - random | "
        "expert paths (share of clips) | passes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in sorted(rows, key=lambda row: (row["label"], row["dense"]["epochs"], row["seed"])):
        a = row["after"]
        shares = " / ".join(f"{100 * share:.0f}" for share in row["path_share"])
        lines.append(
            f"| {row['label']} | {row['dense']['epochs']:g} | {row['seed']} | {100 * a['learned']:.1f} | "
            f"{100 * a['random']:.1f} | {100 * a['learned_minus_random']:+.1f} ± "
            f"{100 * a['learned_minus_random_se']:.1f} | {shares} % | {'yes' if timesformer_passes(row) else 'no'} |"
        )
    lines += [
        "",
        "| round | recipe | dense epochs | seeds run | mean clean | verdict |",
        "|---:|---|---:|---|---:|---|",
    ]
    known = {recipe for recipes in TIMESFORMER_ROUNDS.values() for recipe in recipes}
    for row in rows:
        if (row["label"], row["dense"]["epochs"]) not in known:
            raise SystemExit(
                f"{row['path']}: {row['label']!r} after {row['dense']['epochs']:g} dense epochs is not a "
                "recipe of rounds 15-16"
            )
    decision = None
    for round_number, recipes in TIMESFORMER_ROUNDS.items():
        round_rows = [row for row in rows if (row["label"], row["dense"]["epochs"]) in recipes]
        try:
            summaries, chosen = timesformer_verdicts(round_rows, recipes)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        for recipe in sorted(summaries, key=lambda recipe: (recipe["label"], recipe["dense_epochs"])):
            clean = (
                "–"
                if recipe["clean"] is None
                else f"{100 * recipe['clean']:.1f}"
                + (f" ± {100 * recipe['clean_se']:.1f}" if recipe["clean_se"] is not None else "")
            )
            lines.append(
                f"| {round_number} | {recipe['label']} | {recipe['dense_epochs']:g} | "
                f"{', '.join(map(str, sorted(recipe['seeds']))) or '–'} | {clean} | {recipe['verdict']} |"
            )
        if decision is None:
            if chosen:
                decision = (
                    f"Chosen (round {round_number}): {chosen['label']} after a dense phase of "
                    f"{chosen['dense_epochs']:g} epochs ({100 * chosen['clean']:.1f} % mean validation clean "
                    "accuracy)."
                )
            elif not all(recipe["verdict"].startswith("fails") for recipe in summaries):
                decision = f"Nothing chosen yet: recipes of round {round_number} are still to run."
    lines += [
        "",
        decision
        or (
            "No recipe passes: by the rule, step 5 reports TimeSformer-MoE as not a working mixture "
            "at this scale and trains no defense row on it."
        ),
    ]
    Path(args.docs).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["dense", "variants", "at", "report"], required=True)
    parser.add_argument("--output-dir", default="outputs/routing_relevance")
    parser.add_argument(
        "--docs",
        default=None,
        help="--stage report: the page to write (docs/routing_relevance.md, for --model-type "
        "timesformer docs/routing_relevance_timesformer.md)",
    )
    parser.add_argument(
        "--at-dir", default="outputs/routing_relevance_at", help="--stage report: where --stage at wrote its results"
    )
    parser.add_argument(
        "--extra-dirs",
        nargs="*",
        default=None,
        help="--stage report: further output folders (default: rounds 6-14's, or with --model-type "
        "timesformer rounds 15-16's outputs/rr_ts_d{20,40}[_s1|_s2])",
    )
    parser.add_argument("--num-videos", type=int, default=2400)
    parser.add_argument("--dense-epochs", type=float, default=30)
    parser.add_argument("--moe-epochs", type=float, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th variant starting at i")
    parser.add_argument("--select", default="", help="--stage variants: only the variants whose label contains this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--model-type",
        choices=["videomae", "timesformer"],
        default="videomae",
        help="the backbone (rounds 15-16 are TimeSformer's and have their own report; --stage at is VideoMAE's)",
    )
    args = parser.parse_args()
    if args.model_type != "videomae" and args.stage == "at":
        parser.error(f"--model-type {args.model_type} is for --stage dense, variants and report only")
    if args.extra_dirs is None:
        args.extra_dirs = (
            [f"outputs/rr_ts_d{dense}{suffix}" for dense in (20, 40) for suffix in ("", "_s1", "_s2")]
            if args.model_type == "timesformer"
            else ["outputs/rr_d10", "outputs/rr_d15", "outputs/rr_d20", "outputs/rr_d20_s1"]
        )
    if args.docs is None:
        args.docs = f"docs/routing_relevance{'_timesformer' if args.model_type == 'timesformer' else ''}.md"
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage == "report" and args.model_type == "timesformer":
        stage_report_timesformer(args, out)
        return
    {"dense": stage_dense, "variants": stage_variants, "at": stage_at, "report": stage_report}[args.stage](args, out)


if __name__ == "__main__":
    main()
