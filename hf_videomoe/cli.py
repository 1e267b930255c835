"""The ``hf-videomoe`` command line: demo, train, attack, evaluate, push, bench.

Every subcommand imports what it needs lazily so ``hf-videomoe --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODEL_TYPES = ("videomae_moe", "timesformer_moe", "videomae")
BENCHMARKS = ("moe", "attacks", "training", "scale")


class CLIError(Exception):
    """An error the user can act on; printed without a traceback."""


# argparse types: a bad value exits 2 with "argument --flag: ..." before any work.
def _integer_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _integer_at_least(1, "a positive integer")
non_negative_int = _integer_at_least(0, "an integer >= 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {value}")
    return value


def pixel_budget(text: str) -> float:
    """An L∞ budget in [0, 1] pixel units (8/255 ≈ 0.0314)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] (pixel units, e.g. 0.0314 for 8/255), got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a budget in (0, 1] in [0, 1] pixel units (8/255 ≈ 0.0314, not 8), got {value}")
    return value


def eps_list_in_255ths(text: str) -> list[float]:
    """``4,8,12`` → [4/255, 8/255, 12/255]."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers in /255 units (e.g. 4,8,16), got {item!r}") from None
        if not 0.0 < value <= 255.0:
            raise argparse.ArgumentTypeError(f"each value must be in (0, 255] (/255 units), got {value:g}")
        values.append(value / 255)
    return values


# ----------------------------------------------------------------------------------------------------------------------
# Shared argument groups


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="moving-shapes",
        help="'moving-shapes' (the built-in synthetic benchmark) or a local video folder (see --layout).",
    )
    group.add_argument("--layout", default="folders", choices=("folders", "ucf101", "hmdb51"),
                       help="Layout of a local video folder: class-per-folder, or UCF-101 / HMDB-51 with split files.")
    group.add_argument("--split-dir", default=None, help="Folder with the UCF-101 / HMDB-51 split files.")
    group.add_argument("--split-id", type=int, default=1, help="Official split number (1-3) for UCF-101 / HMDB-51.")
    group.add_argument("--num-videos", type=positive_int, default=800, help="MovingShapes: clips to generate (train + test).")
    group.add_argument("--difficulty", default="easy", choices=("easy", "medium", "hard"),
                       help="MovingShapes difficulty (default easy: the level a small model learns in minutes on a CPU; "
                       "medium / hard need far longer runs, docs/RESULTS.md §1).")
    group.add_argument("--num-frames", type=positive_int, default=8, help="Frames per clip.")
    group.add_argument("--image-size", type=positive_int, default=32, help="Frame height and width.")
    group.add_argument("--data-seed", type=int, default=0, help="Seed of the MovingShapes generator.")


def _add_attack_arguments(parser: argparse.ArgumentParser, many: bool) -> None:
    group = parser.add_argument_group("attack")
    if many:
        group.add_argument("--attacks", default="pgd,tlga-r,j-tlga",
                           help="Comma-separated attack names (see `hf-videomoe attack --list`).")
    else:
        group.add_argument("--attack", default="pgd", help="Attack name (see --list).")
    group.add_argument("--eps", type=positive_float, default=8 / 255, help="Perturbation budget in [0,1] pixel units (8/255).")
    group.add_argument("--steps", type=non_negative_int, default=10, help="Attack iterations.")
    group.add_argument("--norm", default="linf", choices=("linf", "l2"), help="Threat model: L-inf or L2 ball.")
    group.add_argument("--seed", type=int, default=0, help="Attack seed (random start).")
    group.add_argument("--num-samples", type=positive_int, default=None, help="Evaluate at most this many test clips.")
    group.add_argument("--batch-size", type=positive_int, default=16, help="Clips per attack / evaluation batch.")


def _load_dataset(args, split: str):
    """The requested split as a `datasets.Dataset` with `pixel_values` and `labels`."""
    from .data import load_video_folder, make_moving_shapes

    if args.dataset == "moving-shapes":
        data = make_moving_shapes(
            args.num_videos, num_frames=args.num_frames, image_size=args.image_size, seed=args.data_seed,
            difficulty=args.difficulty,
        )
        return data[split]
    path = Path(args.dataset)
    if not path.exists():
        raise CLIError(f"--dataset {path} does not exist (use 'moving-shapes' or a local video folder).")
    kwargs = {"layout": args.layout, "split": split}
    if args.layout != "folders":
        kwargs.update(split_id=args.split_id, split_dir=args.split_dir)
    return load_video_folder(path, num_frames=args.num_frames, image_size=args.image_size, **kwargs)


def _load_model(path: str):
    import hf_videomoe  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForVideoClassification

    if not Path(path).exists():
        raise CLIError(f"--model {path} does not exist: pass a directory written by `hf-videomoe train`.")
    try:
        return AutoModelForVideoClassification.from_pretrained(path).eval()
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(f"--model {path} could not be loaded: {err}") from err


def _subset(dataset, num_samples):
    if num_samples is not None and num_samples < len(dataset):
        return dataset.select(range(num_samples))
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed)


def cmd_train(args) -> None:
    import hf_videomoe
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from .data import VideoCollator, stack_pixel_values
    from .evaluation import compute_metrics
    from .moe import cluster_routers
    from .training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer

    train_dataset = _load_dataset(args, "train")
    eval_dataset = _load_dataset(args, "test")
    label_names = train_dataset.features["labels"].names
    common = dict(
        image_size=args.image_size, num_frames=args.num_frames, patch_size=args.patch_size,
        hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
        intermediate_size=4 * args.hidden_size, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
    )
    moe = dict(num_experts=args.num_experts, num_experts_per_tok=args.top_k, router_granularity=args.granularity,
               router_gate=args.router_gate)
    if args.dense_checkpoint:
        model_cls = (hf_videomoe.TimesformerMoeForVideoClassification if args.model_type == "timesformer_moe"
                     else hf_videomoe.VideoMAEMoeForVideoClassification)
        model = model_cls.from_dense(args.dense_checkpoint, expert_init=args.expert_init,
                                     expert_init_ratio=args.expert_init_ratio, expert_init_seed=args.seed, **moe)
        if args.cluster_router_clips:
            # A seeded random subset: video folders list their clips class by class.
            calibration = train_dataset.shuffle(seed=args.seed).select(
                range(min(args.cluster_router_clips, len(train_dataset)))
            )
            cluster_routers(model, stack_pixel_values(calibration), seed=args.seed)
    elif args.cluster_router_clips:
        raise CLIError("--cluster-router-clips initialises the routers of a model upcycled with --dense-checkpoint.")
    elif args.model_type == "videomae_moe":
        model = hf_videomoe.VideoMAEMoeForVideoClassification(hf_videomoe.VideoMAEMoeConfig(**common, **moe))
    elif args.model_type == "timesformer_moe":
        model = hf_videomoe.TimesformerMoeForVideoClassification(hf_videomoe.TimesformerMoeConfig(**common, **moe))
    else:
        if args.adv_method in ("j-tlat", "advmoe"):
            raise CLIError(f"--adv-method {args.adv_method} needs an MoE model; use --model-type videomae_moe.")
        model = VideoMAEForVideoClassification(VideoMAEConfig(**common))

    training_args = AdversarialTrainingArguments(
        output_dir=args.output_dir,
        adv_method=args.adv_method,
        adv_eps=args.eps,
        adv_steps=args.adv_steps,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=args.warmup_steps,
        eval_strategy="epoch" if args.eval_attacks else "no",
        save_strategy="epoch",
        save_total_limit=2,
        eval_attacks=[a for a in args.eval_attacks.split(",") if a] if args.eval_attacks else [],
        logging_steps=10,
        seed=args.seed,
        report_to=[],
        use_cpu=args.use_cpu,
    )
    trainer_cls = JTLATTrainer if args.adv_method == "j-tlat" else AdversarialTrainer
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=VideoCollator(),
        compute_metrics=compute_metrics,
    )
    trainer.train(resume_from_checkpoint=args.resume or None)
    trainer.save_model(args.output_dir)
    metrics = trainer.evaluate()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=2))


def cmd_attack(args) -> None:
    import torch

    from .attacks import ATTACKS, build_attack
    from .attacks.diagnostics import routing_change
    from .data import VideoCollator
    from .moe import is_moe_model

    if args.list:
        for name, cls in ATTACKS.items():
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:10s} {doc[0] if doc else ''}")
        return
    if not args.model:
        raise CLIError("--model is required (a directory written by `hf-videomoe train`).")
    attack = build_attack(args.attack, eps=args.eps, steps=args.steps, norm=args.norm, seed=args.seed)  # checks first
    model = _load_model(args.model)
    dataset = _subset(_load_dataset(args, "test"), args.num_samples)
    collate = VideoCollator()
    from tqdm.auto import tqdm

    clean_correct = adv_correct = total = 0
    changes = []
    for start in tqdm(range(0, len(dataset), args.batch_size), desc=f"{args.attack} attack", unit="batch"):
        batch = collate([dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))])
        adv = attack(model, batch)
        with torch.no_grad():
            clean_correct += int((model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum())
            adv_correct += int((model(adv["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
        if is_moe_model(model):
            changes.append(routing_change(model, batch["pixel_values"], adv["pixel_values"])["overall"])
    result = {
        "attack": attack.settings(),
        "num_samples": total,
        "clean_accuracy": clean_correct / total,
        "robust_accuracy": adv_correct / total,
    }
    if changes:
        result["routing_change"] = sum(changes) / len(changes)
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))


def cmd_evaluate(args) -> None:

    from .evaluation import evaluate_robustness
    from .hub import build_model_card

    model = _load_model(args.model)
    dataset = _subset(_load_dataset(args, "test"), args.num_samples)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    eps_sweep = args.eps_sweep
    if args.dataset == "moving-shapes":
        dataset_name = "MovingShapes"
        dataset_kwargs = {"num_videos": args.num_videos, "num_frames": args.num_frames,
                          "image_size": args.image_size, "seed": args.data_seed, "difficulty": args.difficulty}
    else:
        dataset_name, dataset_kwargs = args.dataset, None
    report = evaluate_robustness(
        model, dataset, attacks=attacks, eps=args.eps, steps=args.steps, norm=args.norm, seed=args.seed,
        batch_size=args.batch_size, eps_sweep=eps_sweep, state_dir=args.state_dir, dataset_name=dataset_name,
        mode=args.mode,
        exact_attacks=[a for a in args.exact_attacks.split(",") if a] if args.exact_attacks else None,
    )
    output_dir = Path(args.output_dir or Path(args.model) / "robustness")
    output_dir.mkdir(parents=True, exist_ok=True)
    report.save(output_dir / "report.json")
    (output_dir / "report.md").write_text(report.to_markdown())
    plots = report.plot(output_dir)
    card = build_model_card(report, model_name=Path(args.model).name, plots=plots, dataset_name=dataset_name,
                            dataset_kwargs=dataset_kwargs)
    card.save(output_dir / "README.md")
    print(report.to_markdown())
    print(f"\nReport, plots and model card written to {output_dir}")


def cmd_push(args) -> None:
    from .evaluation import RobustnessReport
    from .hub import push_robust_checkpoint

    report_path = Path(args.report or Path(args.model) / "robustness" / "report.json")
    if not report_path.is_file():
        raise CLIError(f"No robustness report at {report_path}: run `hf-videomoe evaluate --model {args.model}` first.")
    try:
        report = RobustnessReport.load(report_path)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise CLIError(f"--report {report_path} is not a report written by `hf-videomoe evaluate` ({err}).") from err
    model = _load_model(args.model)
    url = push_robust_checkpoint(model, args.repo_id, report, private=args.private, token=args.token)
    print(f"Pushed to {url}")


def cmd_bench(args) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / f"bench_{args.which}.py"
    if not script.is_file():
        raise CLIError(f"{script} not found: `bench` runs the scripts of a source checkout of hf_videomoe.")
    raise SystemExit(subprocess.call([sys.executable, str(script), *args.extra]))


# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .moe import EXPERT_INITS, ROUTER_GATES, ROUTER_GRANULARITIES  # already loaded with the package: no cost

    parser = argparse.ArgumentParser(
        prog="hf-videomoe",
        description="Robust Mixture-of-Experts video transformers: train, attack, evaluate and publish.",
    )
    parser.add_argument("--debug", action="store_true", help="Show the Python traceback of errors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="End-to-end demo on MovingShapes: dense -> MoE, plain AT vs J-TLAT, attacks, reports, card.",
        description="Train a dense VideoMAE, upcycle it to VideoMAE-MoE, adversarially train with plain AT and with "
        "J-TLAT, attack both with PGD, TLGA-R and J-TLGA, and write reports, plots and a model card.",
    )
    demo.add_argument("--output-dir", default="outputs/demo", help="Where checkpoints, reports, plots and cards go.")
    demo.add_argument("--quick", action="store_true", help="Tiny settings that finish in about a minute.")
    demo.add_argument("--seed", type=int, default=0, help="Seed of the data, the models and the attacks.")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser(
        "train", help="Train (optionally adversarially) a video MoE model; works under `accelerate launch`.",
        description="Train on MovingShapes or a local video folder. Runs unchanged under `accelerate launch` "
        "(several GPUs or nodes).",
    )
    _add_data_arguments(train)
    model = train.add_argument_group("model")
    model.add_argument("--model-type", default="videomae_moe", choices=MODEL_TYPES,
                       help="MoE model to train (built from scratch, or upcycled from --dense-checkpoint), or a dense "
                       "VideoMAE baseline.")
    model.add_argument("--dense-checkpoint", default=None,
                       help="Dense VideoMAE / TimeSformer checkpoint (local dir or Hub id) to upcycle into the MoE.")
    model.add_argument("--num-experts", type=positive_int, default=4, help="Experts per MoE layer.")
    model.add_argument("--top-k", type=positive_int, default=1, help="Experts each routing unit is sent to.")
    model.add_argument("--granularity", default="token", choices=ROUTER_GRANULARITIES,
                       help="Routing unit: every token, every frame (its tokens share one decision), the whole clip in "
                       "every layer, or 'model' (the paper's: one decision per clip shared by every MoE layer, so "
                       "expert i is a whole path).")
    model.add_argument("--router-gate", default="straight_through", choices=ROUTER_GATES,
                       help="How the task loss reaches the router (same forward value for all; see docs/METHOD.md).")
    model.add_argument("--expert-init", default="drop_upcycling", choices=EXPERT_INITS,
                       help="With --dense-checkpoint: make the upcycled experts differ (Drop-Upcycling re-initialises "
                       "a different fraction of each expert's neurons) or keep exact copies ('copy'). Without it "
                       "experts start from independent random weights anyway.")
    model.add_argument("--cluster-router-clips", type=non_negative_int, default=0,
                       help="With --dense-checkpoint: start every router from k-means clusters of its inputs on this "
                       "many training clips, so each expert gets a coherent share of the data from the first step "
                       "(0: random routers). Measured to help with --granularity model (the demo uses 512) and not "
                       "with token routing; see docs/METHOD.md.")
    model.add_argument("--expert-init-ratio", type=float, default=0.5,
                       help="Fraction of neurons re-initialised per expert (drop_upcycling) or relative noise (noise).")
    model.add_argument("--patch-size", type=int, default=8, help="Patch size (models built from scratch only).")
    model.add_argument("--hidden-size", type=int, default=96, help="Hidden size (models built from scratch only).")
    model.add_argument("--num-layers", type=int, default=4, help="Transformer layers (models built from scratch only).")
    model.add_argument("--num-heads", type=int, default=4, help="Attention heads (models built from scratch only).")
    opt = train.add_argument_group("training")
    opt.add_argument("--adv-method", default="none", choices=("none", "pgd-at", "trades", "advmoe", "tlat", "j-tlat"),
                     help="Training method: clean, PGD-AT, TRADES, AdvMoE-style, TLAT or J-TLAT (docs/METHOD.md §3).")
    opt.add_argument("--eps", type=pixel_budget, default=8 / 255, help="Training attack budget (L-inf, [0,1] pixels).")
    opt.add_argument("--adv-steps", type=positive_int, default=3, help="Training attack steps.")
    opt.add_argument("--eval-attacks", default="pgd", help="Comma-separated attacks for robust eval each epoch.")
    opt.add_argument("--epochs", type=float, default=5, help="Training epochs.")
    opt.add_argument("--max-steps", type=int, default=-1, help="Stop after this many optimizer steps (overrides --epochs).")
    opt.add_argument("--batch-size", type=positive_int, default=16, help="Clips per device and step.")
    opt.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW peak learning rate.")
    opt.add_argument("--warmup-steps", type=int, default=20, help="Linear warm-up steps.")
    opt.add_argument("--seed", type=int, default=0, help="Seed of the model init, data order and training attacks.")
    opt.add_argument("--use-cpu", action="store_true", help="Force CPU even when a GPU is visible.")
    opt.add_argument("--resume", default=None, help="Checkpoint directory to resume from (or 'true' for the last).")
    train.add_argument("--output-dir", required=True, help="Checkpoints, the final model and its robustness card.")
    train.set_defaults(func=cmd_train)

    attack = sub.add_parser("attack", help="Attack a trained model on a dataset and print clean vs robust accuracy.")
    attack.add_argument("--model", help="Model directory.")
    attack.add_argument("--list", action="store_true", help="List the available attacks and exit.")
    attack.add_argument("--output", default=None, help="Write the result as JSON here.")
    _add_attack_arguments(attack, many=False)
    _add_data_arguments(attack)
    attack.set_defaults(func=cmd_attack)

    evaluate = sub.add_parser(
        "evaluate", help="Robustness report (clean, per-attack, worst case, routing, Lips-R, FLOPs) + plots + card."
    )
    evaluate.add_argument("--model", required=True, help="Model directory.")
    evaluate.add_argument("--output-dir", default=None, help="Defaults to MODEL/robustness.")
    evaluate.add_argument("--eps-sweep", type=eps_list_in_255ths, default=None, help="Comma-separated ε values in /255 units, e.g. 4,8,12,16.")
    evaluate.add_argument("--state-dir", default=None, help="Save per-sample state here to resume an interrupted run.")
    evaluate.add_argument("--mode", default="full", choices=("full", "cascade"),
                          help="full: every attack on every clip; cascade: each attack only on the clips still "
                               "standing (AutoAttack's; same worst case, faster). --attacks may name 'autoattack'.")
    evaluate.add_argument("--exact-attacks", default=None,
                          help="With --mode cascade: comma-separated attacks that still run on every clip first.")
    _add_attack_arguments(evaluate, many=True)
    _add_data_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    push = sub.add_parser("push", help="Push a robust checkpoint with its robustness model card to the Hub.")
    push.add_argument("--model", required=True, help="Model directory.")
    push.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/videomae-moe-jtlat.")
    push.add_argument("--report", default=None, help="report.json (defaults to MODEL/robustness/report.json).")
    push.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    push.add_argument("--token", default=None, help="Hub token (defaults to the logged-in one).")
    push.set_defaults(func=cmd_push)

    bench = sub.add_parser("bench", help="Run a benchmark script (moe, attacks, training, scale) and write its table under docs/.")
    bench.add_argument("which", choices=BENCHMARKS)
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="Arguments passed to the script.")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.func(args)
    except CLIError as err:
        parser.exit(2, f"hf-videomoe {args.command}: error: {err}\n")
    except (ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        # Library errors are written to be read by a person; a traceback adds nothing for a CLI user.
        parser.exit(2, f"hf-videomoe {args.command}: error: {' '.join(str(err).split())}\n")
    except RuntimeError as err:
        from .hub import HubUploadError

        if args.debug or not isinstance(err, HubUploadError):
            raise err if args.debug else _unexpected(parser, args, err)
        parser.exit(1, f"hf-videomoe {args.command}: error: {' '.join(str(err).split())}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"hf-videomoe {args.command}: interrupted\n")
    except Exception as err:  # a bug, not a user error: say so briefly
        if args.debug:
            raise
        _unexpected(parser, args, err)
    return 0


def _unexpected(parser, args, err: BaseException):
    parser.exit(1, f"hf-videomoe {args.command}: unexpected {type(err).__name__}: {err}\n"
                   "Rerun with `hf-videomoe --debug ...` for the traceback, and please report it.\n")


if __name__ == "__main__":
    sys.exit(main())
