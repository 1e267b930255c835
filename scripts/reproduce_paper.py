"""Small-scale reproduction of the paper's headline tables on MovingShapes (issue 7, item 3).

"Exposing and Defending the Achilles' Heel of Video Mixture-of-Experts" (Wang et al., ICLR 2026) reports two tables
(see ``shared/DESIGN.md`` §2): (a) the strength of its component attacks against an adversarially trained (PGD-AT)
MoE, and (b) defenses (dense AT, MoE AT, AdvMoE-style, TLAT, J-TLAT) with clean / PGD / J-TLGA / AutoAttack-style
accuracy and cost. This script re-runs both, in miniature, with the package's own pipeline, plus the ablations the
reviewers asked for (temporal step rule, Lipschitz term, load-balancing loss, guidance).

Protocol (one shared pipeline per seed; every defense gets the same budget)::

    MovingShapes (fixed data seed) ─► dense VideoMAE, clean training ("pretrained" checkpoint)
        ├─► dense AT (PGD-AT, from the dense checkpoint)
        └─► upcycle to MoE (4 experts, top-1) ─► MoE AT | AdvMoE-style | TLAT | J-TLAT | J-TLAT ablations
    every model ─► evaluate_robustness with fixed settings (same attacks, steps, seed and test subset for all rows)

Usage::

    python scripts/reproduce_paper.py                      # full run (5 seeds, ablations on each; docs/PROTOCOL.md)
    python scripts/reproduce_paper.py --quick              # a couple of minutes, tiny sizes, 1 seed (smoke test)
    python scripts/reproduce_paper.py --seeds 0 1 --skip-ablations --output-dir outputs/repro2
    python scripts/reproduce_paper.py --model-type timesformer
    python scripts/reproduce_paper.py --validation --seeds 0 1 2 --defenses j-tlat --ablations expert-tla-e
    python scripts/reproduce_paper.py --seeds 0 1 --defenses j-tlat --attack-table-seeds --ablations no-router-step

Every finished unit of work (dense checkpoint, upcycled checkpoint, each (seed, method) training run and each
evaluation) is saved under ``--output-dir``; a rerun with the same settings skips what is done, so an interrupted run
resumes where it stopped. The full run's default folder, ``results/reproduction2[-timesformer]``, keeps its JSON
results and compressed per-clip reports under version control (its .gitignore says which), no weights, so the run
resumes on a fresh clone too: finished units are read from their JSON, checkpoints on disk are loaded, and the others
are retrained and checked against their recorded weight fingerprint. ``--reproducible`` (the default; it restarts the
process with torch's, MKL's, oneDNN's and numpy's code paths pinned, one thread and deterministic algorithms, see
``hf_videomoe.reproducibility``) makes that fingerprint the same on any x86-64 CPU; runs recorded without it
reproduce only on the same kind of machine. The tables are printed as Markdown and written to ``--results-file``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_videomoe.reproducibility import enable_reproducible_mode  # noqa: E402
from hf_videomoe.reproduction import (  # noqa: E402
    ABLATIONS,
    DEFENSES,
    MANUAL_MARKER,
    Reproduction,
    Settings,
    compute_seconds,
    log,
    machine_description,
    software_of_results,
    what_holds,
    write_json,
    write_results,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed, a couple of minutes (smoke test)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of table (b) (default 0-4; quick: 0)")
    p.add_argument(
        "--ablation-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds of the ablations (default: every seed of table (b))",
    )
    p.add_argument(
        "--attack-table-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds of table (a) at its extra ε (default: all seeds of table (b); none: give the flag alone). "
        "Table (a) at the training ε is MoE AT's own evaluation and always runs with it",
    )
    p.add_argument(
        "--defenses",
        nargs="+",
        choices=list(DEFENSES),
        default=None,
        help="rows of table (b) to run, in this order (default: all). The primary comparison first: "
        "--defenses moe-at j-tlat moe-at-matched",
    )
    which_ablations = p.add_mutually_exclusive_group()
    which_ablations.add_argument(
        "--ablations",
        nargs="+",
        choices=list(ABLATIONS),
        default=None,
        help="J-TLAT ablations to run, in this order, each on every ablation seed before the next (default: all)",
    )
    which_ablations.add_argument("--skip-ablations", action="store_true", help="do not run the J-TLAT ablations")
    p.add_argument("--model-type", choices=["videomae", "timesformer"], default="videomae")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="cache of checkpoints and JSON results (default results/reproduction2[-timesformer]; "
        "quick: outputs/reproduce-quick[-timesformer])",
    )
    p.add_argument(
        "--results-file",
        type=Path,
        default=None,
        help="Markdown results (default docs/RESULTS_reproduction2[-timesformer].md, not the first "
        "reproduction's docs/RESULTS_reproduction.md; with --output-dir or --quick: "
        "<output-dir>/RESULTS.md)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice; --reproducible uses one)"
    )
    p.add_argument(
        "--reproducible",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the numeric code paths so training gives the same weights on any x86-64 CPU (restarts "
        "the process; slower; default on)",
    )
    p.add_argument(
        "--validation",
        action="store_true",
        help="validation mode: train every model on the first 80%% of the train split and evaluate on its last 20%% "
        "(never the test clips), in its own folder (default results/reproduction2-validation); for choosing "
        "hyperparameters",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print which jobs of this plan are done and the compute they recorded, then exit (runs nothing)",
    )
    p.add_argument(
        "--train-eps",
        type=float,
        default=None,
        help="training ε in /255 units (default 4); also the ε of table (b) and the ablations",
    )
    p.add_argument(
        "--adv-epochs",
        type=float,
        default=None,
        help="epochs of every adversarial training row (default 5; the training-length curve of docs/PROTOCOL.md "
        "runs 10 and 15, each in its own --output-dir started from the same mixtures)",
    )
    p.add_argument(
        "--eval-eps",
        type=float,
        nargs="+",
        default=None,
        help="extra ε of table (a) in /255 units (default 8 14); the training ε always comes first",
    )
    return p.parse_args(argv)


def status_markdown(progress: list[dict]) -> str:
    lines = ["| seed | jobs done | compute recorded (h) | not done yet |", "|---:|---:|---:|---|"]
    for row in progress:
        missing = ", ".join(row["missing"][:4]) + (
            f", … ({len(row['missing'])} in all)" if len(row["missing"]) > 4 else ""
        )
        lines.append(
            f"| {row['seed']} | {row['done']} / {row['planned']} | {row['seconds'] / 3600:.2f} | {missing or '–'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    # First: may restart the process with the pinned environment (hf_videomoe.reproducibility).
    reproducibility = enable_reproducible_mode(args.reproducible)
    command = "python scripts/reproduce_paper.py" + (
        " " + " ".join(map(shlex.quote, sys.argv[1:])) if argv is None else " " + " ".join(map(shlex.quote, argv))
    )
    command = command.rstrip()
    hf_logging.set_verbosity_error()
    if args.threads and not reproducibility["enabled"]:
        torch.set_num_threads(args.threads)
    overrides = {"model_type": args.model_type}
    if args.train_eps is not None:
        overrides["train_eps"] = args.train_eps / 255
    if args.eval_eps is not None or args.train_eps is not None:
        train_eps = overrides.get("train_eps", Settings.train_eps)
        extra = [e / 255 for e in (args.eval_eps if args.eval_eps is not None else [8, 14])]
        overrides["eps_values"] = [train_eps] + [e for e in extra if e != train_eps]
    if args.validation:
        overrides["eval_split"] = "validation"
    if args.adv_epochs is not None:
        overrides["adv_epochs"] = args.adv_epochs
    settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    ablation_seeds = args.ablation_seeds if args.ablation_seeds is not None else list(seeds)
    attack_table_seeds = args.attack_table_seeds if args.attack_table_seeds is not None else list(seeds)
    unknown = sorted(set(attack_table_seeds) - set(seeds))
    if unknown:
        raise SystemExit(
            f"--attack-table-seeds {unknown} are not among --seeds {seeds} (table (a) uses table (b)'s MoE AT models)."
        )
    suffix = (
        ("-quick" if args.quick else "")
        + ("-timesformer" if args.model_type == "timesformer" else "")
        + ("-validation" if args.validation else "")
    )
    # The full run's cache is the tracked results/ folder (JSON results and compressed reports): it resumes
    # across machines and sessions.
    output_dir = args.output_dir or (
        REPO_ROOT / "outputs" / f"reproduce{suffix}" if args.quick else REPO_ROOT / "results" / f"reproduction2{suffix}"
    )
    # A run on another cache (a part of the protocol, a trial) must not overwrite the full run's tracked results page.
    results_file = args.results_file or (
        output_dir / "RESULTS.md"
        if args.quick or args.output_dir or args.validation
        else REPO_ROOT / "docs" / f"RESULTS_reproduction2{suffix}.md"
    )

    if args.status:
        if not (output_dir / "settings.json").exists():
            raise SystemExit(f"no reproduction results in {output_dir}")
        repro = Reproduction(
            settings,
            output_dir,
            seeds,
            ablation_seeds,
            attack_table_seeds,
            args.skip_ablations,
            defenses=args.defenses,
            ablations=args.ablations,
        )
        print(status_markdown(repro.progress()))
        return 0

    start = time.perf_counter()
    log(
        f"output dir {output_dir}; seeds {seeds}; table (a) seeds {attack_table_seeds}; ablation seeds "
        f"{[] if args.skip_ablations else ablation_seeds}; {machine_description()}; reproducible mode "
        f"{'on' if reproducibility['enabled'] else 'off'}"
    )
    repro = Reproduction(
        settings,
        output_dir,
        seeds,
        ablation_seeds,
        attack_table_seeds,
        args.skip_ablations,
        defenses=args.defenses,
        ablations=args.ablations,
    )
    repro.run()
    wall = time.perf_counter() - start

    results = repro.collect()
    ab_seeds = [] if args.skip_ablations else ablation_seeds
    holds = what_holds(results, settings, ab_seeds)
    write_json(
        output_dir / "results.json",
        {
            "settings": settings.to_dict(),
            "seeds": seeds,
            "ablation_seeds": ab_seeds,
            "attack_table_seeds": attack_table_seeds,
            "wall_seconds": wall,
            "command": command,
            "reproducibility": reproducibility,
            "results": {k: {str(kk): vv for kk, vv in v.items()} for k, v in results.items()},
        },
    )
    text = write_results(
        results_file,
        settings,
        results,
        command=command,
        wall_seconds=wall,
        compute_seconds=compute_seconds(output_dir),
        seeds=seeds,
        ablation_seeds=ab_seeds,
        attack_table_seeds=attack_table_seeds,
        holds=holds,
        dense_clean=results["dense_clean"],
        software=software_of_results(output_dir),
    )
    print()
    print(text.split("## Protocol", 1)[0].strip())
    print()
    print("## (a)" + text.split("## (a)", 1)[1].replace(MANUAL_MARKER, "").rstrip())
    print(f"\nWall-clock: {wall / 60:.1f} min. Results written to {results_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
