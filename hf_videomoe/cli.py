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

from . import __version__
from .commands.common import (  # noqa: F401  (CLIError and the argument types are also used from here)
    EPS_HELP,
    CLIError,
    add_data_arguments,
    applicable_attack_names,
    checkpoint_geometry,
    eps_list,
    load_dataset,
    load_model,
    non_negative_int,
    parse_eps,
    parse_eps_any_norm,
    pixel_eps_error,
    positive_float,
    positive_int,
    subset,
)

BENCHMARKS = ("moe", "attacks", "training", "scale", "data")


def _load_dataset(args, split: str, model=None):
    """The requested split as a `datasets.Dataset` with `pixel_values` and `labels`; videos decoded for ``model``
    (loaded from ``args.model``) when one is given."""
    geometry = checkpoint_geometry(model, args.model) if model is not None and args.dataset != "moving-shapes" else None
    return load_dataset(args, split, args.data_seed, geometry=geometry)


_load_model = load_model
_subset = subset
_add_data_arguments = add_data_arguments


def _add_attack_arguments(parser: argparse.ArgumentParser, many: bool) -> None:
    group = parser.add_argument_group("attack")
    if many:
        group.add_argument(
            "--attacks",
            default="pgd,tlga-r,j-tlga",
            help="Comma-separated attack names (see `hf-videomoe attack --list`).",
        )
    else:
        group.add_argument("--attack", default="pgd", help="Attack name (see --list).")
    group.add_argument(
        "--eps",
        type=parse_eps_any_norm,
        default=8 / 255,
        help=f"Perturbation budget: for L-inf {EPS_HELP}; for L2 any positive number.",
    )
    group.add_argument("--steps", type=non_negative_int, default=10, help="Attack iterations.")
    group.add_argument("--norm", default="linf", choices=("linf", "l2"), help="Threat model: L-inf or L2 ball.")
    group.add_argument("--seed", type=int, default=0, help="Attack seed (random start).")
    group.add_argument("--num-samples", type=positive_int, default=None, help="Evaluate at most this many test clips.")
    group.add_argument("--batch-size", type=positive_int, default=16, help="Clips per attack / evaluation batch.")


# ----------------------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed, reproducible=args.reproducible)


def cmd_train(args) -> None:
    from .commands.train import run_train

    run_train(args.train_args)


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
    model = _load_model(args.model)  # a dense checkpoint's normalisation included: pixels stay in [0, 1]
    applicable_attack_names([args.attack], model, "--attack")
    dataset = _subset(_load_dataset(args, "test", model), args.num_samples)
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
    from .evaluation.output_folder import EVALUATE_OUTPUTS, staged_output_folder

    output_dir = Path(args.output_dir or Path(args.model) / "robustness")
    # Locked before any work (a second run into the same folder stops at once, naming the first); written whole.
    with staged_output_folder(output_dir, what="hf-videomoe evaluate", owned_names=EVALUATE_OUTPUTS) as staging:
        _evaluate_into(args, staging)
    print(f"\nReport, plots and model card written to {output_dir}")


def _robustness_arguments(args, attacks: list[str], dataset_name: str):
    """The options of `hf-videomoe evaluate` as `RobustnessArguments`; the others keep their defaults."""
    from .evaluation import RobustnessArguments

    return RobustnessArguments(
        attacks=attacks,
        eps=args.eps,
        steps=args.steps,
        norm=args.norm,
        seed=args.seed,
        batch_size=args.batch_size,
        eps_sweep=args.eps_sweep,
        state_dir=args.state_dir,
        dataset_name=dataset_name,
        mode=args.mode,
        exact_attacks=[a for a in args.exact_attacks.split(",") if a] if args.exact_attacks else None,
    )


def _evaluate_into(args, output_dir: Path) -> None:
    from .evaluation import evaluate_robustness
    from .hub import build_model_card
    from .hub.checkpoint_files import read_training_record, write_card_inputs

    model = _load_model(args.model)  # a dense checkpoint's normalisation included: pixels stay in [0, 1]
    attacks = applicable_attack_names([a.strip() for a in args.attacks.split(",") if a.strip()], model, "--attacks")
    dataset = _subset(_load_dataset(args, "test", model), args.num_samples)
    if args.dataset == "moving-shapes":
        dataset_name = "MovingShapes"
        dataset_kwargs = {
            "num_videos": args.num_videos,
            "num_frames": args.num_frames,
            "image_size": args.image_size,
            "seed": args.data_seed,
            "difficulty": args.difficulty,
        }
    else:
        dataset_name = args.dataset
        dataset_kwargs = {
            "path": args.dataset,
            "num_frames": args.num_frames,
            "image_size": args.image_size,
            "layout": args.layout,
        }
        if args.layout != "folders":
            dataset_kwargs.update(split_id=args.split_id, split_dir=args.split_dir)
    report = evaluate_robustness(model, dataset, _robustness_arguments(args, attacks, dataset_name))
    report.save(output_dir / "report.json")
    (output_dir / "report.md").write_text(report.to_markdown())
    plots = report.plot(output_dir)
    record = read_training_record(args.model)
    write_card_inputs(output_dir, dataset_name, dataset_kwargs)
    card = build_model_card(
        report,
        model_name=Path(args.model).name,
        plots=plots,
        dataset_name=dataset_name,
        dataset_kwargs=dataset_kwargs,
        training_recipe=record.get("training_recipe"),
        base_model=record.get("base_model"),
        model_path=str(args.model),
    )
    card.save(output_dir / "README.md")
    print(report.to_markdown())


def cmd_push(args) -> None:
    from .evaluation import RobustnessReport
    from .hub import push_robust_checkpoint
    from .hub.checkpoint_files import find_report, read_card_inputs, read_training_record

    report_path = Path(args.report) if args.report else find_report(args.model)
    if report_path is None or not report_path.is_file():
        where = (
            report_path or f"{Path(args.model) / 'robustness' / 'report.json'} or {Path(args.model) / 'report.json'}"
        )
        raise CLIError(f"No robustness report at {where}: run `hf-videomoe evaluate --model {args.model}` first.")
    try:
        report = RobustnessReport.load(report_path)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise CLIError(f"--report {report_path} is not a report written by `hf-videomoe evaluate` ({err}).") from err
    model = _load_model(args.model, pixel_space=False)  # the checkpoint as it is
    record, inputs = read_training_record(args.model), read_card_inputs(report_path)
    url = push_robust_checkpoint(
        model,
        args.repo_id,
        report,
        private=args.private,
        token=args.token,
        training_recipe=record.get("training_recipe"),
        base_model=record.get("base_model"),
        dataset_name=inputs.get("dataset_name"),
        dataset_kwargs=inputs.get("dataset_kwargs"),
    )
    print(f"Pushed to {url}")


def cmd_bench(args) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / f"bench_{args.which}.py"
    if not script.is_file():
        raise CLIError(f"{script} not found: `bench` runs the scripts of a source checkout of hf_videomoe.")
    raise SystemExit(subprocess.call([sys.executable, str(script), *args.extra]))


# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-videomoe",
        description="Robust Mixture-of-Experts video transformers: train, attack, evaluate and publish.",
    )
    parser.add_argument("--debug", action="store_true", help="Show the Python traceback of errors.")
    parser.add_argument("--version", action="version", version=f"hf-videomoe (hf_videomoe) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="End-to-end demo on MovingShapes: dense -> MoE, plain AT vs J-TLAT, attacks, reports, card.",
        description="Train a dense VideoMAE, upcycle it to VideoMAE-MoE, adversarially train with plain AT and with "
        "J-TLAT, attack both with PGD, TLGA-R and J-TLGA, and write reports, plots and a model card.",
    )
    demo.add_argument("--output-dir", default="outputs/demo", help="Where checkpoints, reports, plots and cards go.")
    demo.add_argument("--quick", action="store_true", help="Tiny settings that finish in about a minute.")
    demo.add_argument("--seed", type=int, default=0, help="Seed of the data, the models and the attacks.")
    demo.add_argument(
        "--reproducible",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Pin torch's, MKL's, oneDNN's and numpy's code paths, one thread and deterministic "
        "algorithms, so the run gives the same weights on any x86-64 CPU (restarts the process to "
        "do it; slower). Default on.",
    )
    demo.set_defaults(func=cmd_demo)

    # Its options are parsed by transformers' HfArgumentParser (every TrainingArguments flag): see commands/train.py.
    sub.add_parser(
        "train",
        add_help=False,
        help="Train (optionally adversarially) a video MoE model; every Trainer flag works; runs under `accelerate "
        "launch`.",
    ).set_defaults(func=cmd_train)

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
    evaluate.add_argument(
        "--eps-sweep",
        type=eps_list,
        default=None,
        help="Comma-separated ε values written like --eps, e.g. 4/255,8/255,12/255 (= 0.0157,0.0314,0.0471).",
    )
    evaluate.add_argument("--state-dir", default=None, help="Save per-sample state here to resume an interrupted run.")
    evaluate.add_argument(
        "--mode",
        default="full",
        choices=("full", "cascade"),
        help="full: every attack on every clip; cascade: each attack only on the clips still "
        "standing (AutoAttack's; same worst case, faster). --attacks may name 'autoattack'.",
    )
    evaluate.add_argument(
        "--exact-attacks",
        default=None,
        help="With --mode cascade: comma-separated attacks that still run on every clip first.",
    )
    _add_attack_arguments(evaluate, many=True)
    _add_data_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    push = sub.add_parser("push", help="Push a robust checkpoint with its robustness model card to the Hub.")
    push.add_argument("--model", required=True, help="Model directory.")
    push.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/videomae-moe-jtlat.")
    push.add_argument(
        "--report", default=None, help="report.json (defaults to MODEL/robustness/report.json, else MODEL/report.json)."
    )
    push.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    push.add_argument("--token", default=None, help="Hub token (defaults to the logged-in one).")
    push.set_defaults(func=cmd_push)

    bench = sub.add_parser(
        "bench", help="Run a benchmark script (moe, attacks, training, scale, data) and write its table under docs/."
    )
    bench.add_argument("which", choices=BENCHMARKS)
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="Arguments passed to the script.")
    bench.set_defaults(func=cmd_bench)
    return parser


def _split_train_arguments(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``train``'s own arguments go to its HfArgumentParser untouched (the top-level options take no value, so the
    first word that is not an option is the subcommand)."""
    command = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if command is not None and argv[command] == "train":
        return argv[: command + 1], argv[command + 1 :]
    return argv, None


def _check_pixel_budgets(parser: argparse.ArgumentParser, args) -> None:
    """Refuse an L∞ ``--eps`` / ``--eps-sweep`` above 1 (``8`` for 8/255) in one line; L2 budgets may exceed 1."""
    if getattr(args, "norm", "linf") != "linf":
        return
    for flag, values in (("--eps", [getattr(args, "eps", None)]), ("--eps-sweep", getattr(args, "eps_sweep", None))):
        for value in values or []:
            error = value is not None and pixel_eps_error(value)
            if error:
                parser.exit(2, f"hf-videomoe {args.command}: error: argument {flag}: {error}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the ``hf-videomoe`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    argv, train_args = _split_train_arguments(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.train_args = train_args or []
    _check_pixel_budgets(parser, args)
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
    parser.exit(
        1,
        f"hf-videomoe {args.command}: unexpected {type(err).__name__}: {err}\n"
        "Rerun with `hf-videomoe --debug ...` for the traceback, and please report it.\n",
    )


if __name__ == "__main__":
    sys.exit(main())
