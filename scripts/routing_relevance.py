"""Which recipe gives a mixture whose routing matters? Trains mixtures on MovingShapes and scores them on validation.

Every number is measured on the last 20 % of MovingShapes' train split (easy, 8 x 32 x 32, ``--seed``), mainly
learned-routing minus random-routing clean accuracy. ``--stage dense`` trains one dense model; ``--stage variants``
upcycles it to 4 experts at top-1 once per selected variant and fine-tunes the mixture without attacks; ``--stage at``
(VideoMAE) adds adversarial fine-tuning and scores validation robustness; ``--stage report`` writes
docs/routing_relevance.md (with ``--model-type timesformer``, docs/routing_relevance_timesformer.md).

    python scripts/routing_relevance.py --stage dense                    # ~3 min on one core
    python scripts/routing_relevance.py --stage variants --shard 0/2 &   # the variants, two processes
    python scripts/routing_relevance.py --stage variants --shard 1/2
    python scripts/routing_relevance.py --stage report

The variants are ``VARIANTS`` and ``AT_VARIANTS`` of hf_videomoe/reproduction/routing_rounds.py; ``--select`` picks
them by a part of their label (``--select "round 13"``). The rounds, what each found and their commands:
docs/history.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, VideoMAEConfig, VideoMAEForVideoClassification

from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.data import VideoCollator, hold_out_validation, make_moving_shapes, stack_pixel_values
from hf_videomoe.moe import cluster_routers, expert_load, moe_blocks, routing_relevance
from hf_videomoe.reproduction.recipes import (
    NormalizingCollator,
    Settings,
    build_dense,
    fold_input_normalization,
    model_classes,
)
from hf_videomoe.reproduction.routing_pages import relevance_page, relevance_rows, timesformer_page, timesformer_rows
from hf_videomoe.reproduction.routing_rounds import AT_VARIANTS, VARIANTS

# What a folder or row of rounds 1-14 holds: those ran before records named the backbone, and all were VideoMAE.
LEGACY_DENSE_RECORD = {"model_type": "videomae"}


def schedule(**kwargs) -> dict:
    """The training arguments every phase shares (one CPU process, cosine schedule, no checkpoints), with ``kwargs``."""
    return dict(
        per_device_train_batch_size=32,
        weight_decay=0.05,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        **kwargs,
    )


def upcycling() -> dict:
    """4 experts at top-1, on [0, 1] pixels (the mixture takes the clips as the dense model did)."""
    return dict(num_experts=4, num_experts_per_tok=1, image_mean=[0.0] * 3, image_std=[1.0] * 3)


def fit(model, output_dir: Path, epochs: float, learning_rate: float, seed: int, train, collator=None) -> None:
    arguments = TrainingArguments(
        **schedule(output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate, seed=seed)
    )
    collator = VideoCollator() if collator is None else collator
    Trainer(model=model, args=arguments, train_dataset=train, data_collator=collator).train()


def splits(args):
    data = make_moving_shapes(args.num_videos, num_frames=8, image_size=32, seed=args.seed, difficulty="easy")
    return hold_out_validation(data["train"])


def tensors(val) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation clips and their labels."""
    pixel_values = torch.stack([torch.as_tensor(v) for v in val.with_format("torch")["pixel_values"]])
    return pixel_values, torch.as_tensor(val["labels"])


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
        config = VideoMAEConfig(
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
        dense, collator = VideoMAEForVideoClassification(config), VideoCollator()
    else:  # the reproduction's dense model (its sizes, time embeddings) and input normalisation, this script's schedule
        dense = build_dense(Settings(model_type=args.model_type, num_frames=8, image_size=32), label_names)
        collator = NormalizingCollator(VideoCollator())
    fit(dense, out / "dense", args.dense_epochs, 2e-3, args.seed, train, collator)
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
    val_x, val_y = tensors(val)
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
        moe = moe_cls.from_dense(dense_cls.from_pretrained(out / "dense"), **upcycling(), **options)
        if cluster:
            options["cluster_routers"] = cluster_routers(moe, stack_pixel_values(train, 512), seed=args.seed)
        before = routing_relevance(moe, val_x, val_y, seed=args.seed)
        start = time.perf_counter()
        fit(moe.train(), out / "moe", epochs, learning_rate, args.seed, train)
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


def mixture(args, out: Path, train, epochs: int, router_granularity="token", cluster=False, router_aux_loss_coef=0.01):
    """A mixture with the straight-through gate and Drop-Upcycling 0.5, trained ``epochs`` at 1e-3, cached on disk."""
    suffix = f"_{router_granularity}" + ("_clustered" if cluster else "")
    path = out / f"mixture_{epochs}{'' if router_granularity == 'token' and not cluster else suffix}"
    if router_aux_loss_coef != 0.01:
        path = path.with_name(f"{path.name}_aux{router_aux_loss_coef:g}")
    if (path / "config.json").exists():
        return VideoMAEMoeForVideoClassification.from_pretrained(path)
    dense_record(out, "videomae")
    torch.manual_seed(args.seed)
    dense = VideoMAEForVideoClassification.from_pretrained(out / "dense")
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense,
        **upcycling(),
        expert_init="drop_upcycling",
        expert_init_seed=args.seed,
        router_granularity=router_granularity,
        router_aux_loss_coef=router_aux_loss_coef,
    )
    if cluster:
        cluster_routers(moe, stack_pixel_values(train, 512), seed=args.seed)
    fit(moe.train(), out / "moe", epochs, 1e-3, args.seed, train)
    moe.save_pretrained(path)
    return moe


def stage_at(args, out: Path):
    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer

    train, val = splits(args)
    val_x, val_y = tensors(val)
    index, count = (int(v) for v in args.shard.split("/"))
    for position, (label, options) in enumerate(AT_VARIANTS.items()):
        path = out / f"at_{position}.json"
        if position % count != index or path.exists() or args.select not in label:
            continue
        keys = ("router_granularity", "cluster", "router_aux_loss_coef")
        mixture_options = {key: options[key] for key in keys if key in options}
        moe = mixture(args, out, train, options["moe_epochs"], **mixture_options)
        before = routing_relevance(moe, val_x, val_y, seed=args.seed)
        at_args = AdversarialTrainingArguments(
            **schedule(
                output_dir=str(out / "at"),
                adv_method=options["method"],
                adv_eps=4 / 255,
                adv_steps=2,
                num_train_epochs=5,
                learning_rate=options["learning_rate"],
                seed=args.seed,
                **options.get("train_args", {}),
            )
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


def write_page(path: str, lines: list[str]) -> None:
    Path(path).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stage_report(args, out: Path):
    at_dir = Path(args.at_dir) if args.at_dir else out
    extra_dirs = [Path(folder) for folder in args.extra_dirs]
    rows, at_rows = relevance_rows((out, at_dir, *extra_dirs), (at_dir, *extra_dirs), args.dense_epochs)
    settings = dict(seed=args.seed, num_videos=args.num_videos, dense_epochs=args.dense_epochs)
    write_page(args.docs, relevance_page(rows, at_rows, **settings, moe_epochs=args.moe_epochs, at_dir=at_dir))


def stage_report_timesformer(args, out: Path):
    folders = list(dict.fromkeys((out, *(Path(folder) for folder in args.extra_dirs))))
    for folder in folders:
        if not folder.is_dir():
            print(f"note: {folder} does not exist, no rows from it")
    rows = timesformer_rows(folders)
    if not rows:
        raise SystemExit(f"no TimeSformer rows in {out} or {' '.join(args.extra_dirs)}")
    try:
        lines = timesformer_page(rows)
    except ValueError as error:  # a row off the rounds' recipes, or one the rule cannot judge
        raise SystemExit(str(error)) from None
    write_page(args.docs, lines)


def parse_args(argv=None) -> argparse.Namespace:
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
    args = parser.parse_args(argv)
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
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage == "report" and args.model_type == "timesformer":
        stage_report_timesformer(args, out)
        return
    {"dense": stage_dense, "variants": stage_variants, "at": stage_at, "report": stage_report}[args.stage](args, out)


if __name__ == "__main__":
    main()
