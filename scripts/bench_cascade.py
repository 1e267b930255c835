#!/usr/bin/env python
"""Cascade vs full evaluation: the same worst case for less work (issue: reproduction 2).

Evaluates one trained MoE with the reproduction's six-attack ensemble (PGD, TLA-M, J-TLGA, APGD-CE, APGD-DLR, Square)
twice — ``mode="full"`` (every attack on every clip) and ``mode="cascade"`` (AutoAttack's order: each attack only on
the clips still standing) — and prints / writes the wall-clock time of each, the speed-up, the clips each attack ran
on, and whether the worst case agrees clip by clip. Target: cascade >= 2x faster, identical worst case.

Default model: the demo's PGD-AT MoE (its test clips, ε = 4/255, the demo's attack settings)::

    bash scripts/demo.sh                  # writes outputs/demo/pgd-at
    python scripts/bench_cascade.py       # ~3 min on 2 CPU cores; writes docs/bench_cascade.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from transformers import AutoModelForVideoClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_videomoe  # noqa: E402, F401  (registers the MoE Auto classes)
from hf_videomoe.data import make_moving_shapes  # noqa: E402
from hf_videomoe.evaluation import evaluate_robustness  # noqa: E402
from hf_videomoe.reproduction.recipes import DEFENSE_ATTACKS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "outputs" / "demo" / "pgd-at")
    parser.add_argument("--eps", type=float, default=4.0, help="budget in /255 units")
    parser.add_argument("--steps", type=int, default=10, help="steps of the gradient attacks")
    parser.add_argument("--num-samples", type=int, default=128, help="first test clips of the demo's data")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "bench_cascade.md")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        raise SystemExit(f"No model at {args.model}; run `bash scripts/demo.sh` first (or pass --model).")
    hf_logging.set_verbosity_error()
    model = AutoModelForVideoClassification.from_pretrained(args.model).eval()
    config = model.config
    test = make_moving_shapes(
        2400, num_frames=config.num_frames, image_size=config.image_size, seed=0, difficulty="easy"
    )["test"]
    data = test.select(range(min(args.num_samples, len(test))))
    attacks = list(DEFENSE_ATTACKS)
    common = dict(
        attacks=attacks,
        eps=args.eps / 255,
        steps=args.steps,
        seed=0,
        batch_size=args.batch_size,
        return_per_sample=True,
        compute_cost=False,
        progress=False,
    )
    reports, seconds, attacked = {}, {}, {a: 0 for a in attacks}

    def count(info):
        for attack, entry in info["record"]["attacks"].items():
            attacked[attack] += entry.get("attacked", 0)

    for mode in ("full", "cascade"):
        start = time.perf_counter()
        reports[mode] = evaluate_robustness(
            model, data, mode=mode, callback=count if mode == "cascade" else None, **common
        )
        seconds[mode] = time.perf_counter() - start
        print(f"{mode}: {seconds[mode]:.1f} s, worst case {100 * reports[mode].worst_case_accuracy:.1f} %", flush=True)
    full, cascade = reports["full"], reports["cascade"]
    identical = full.per_sample["worst_case_correct"] == cascade.per_sample["worst_case_correct"]
    speedup = seconds["full"] / seconds["cascade"]
    model_name = args.model.relative_to(REPO_ROOT) if args.model.is_relative_to(REPO_ROOT) else args.model
    command = "python scripts/bench_cascade.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    lines = [
        "# Cascade vs full evaluation",
        "",
        f"Command: `{command}` ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__.split('+')[0]})",
        "",
        f"Model: `{model_name}`; {full.num_samples} MovingShapes test clips, clean accuracy "
        f"{100 * full.clean_accuracy:.1f} %; L∞ ε = {args.eps:g}/255, {args.steps} steps, Square 1,000 queries.",
        "",
        "| attack (in order) | full: robust accuracy | cascade: accuracy after it | cascade: clips attacked |",
        "|---|---:|---:|---:|",
    ]
    for attack in attacks:
        lines.append(
            f"| {attack} | {100 * full.robust_accuracy[attack]:.1f} % | "
            f"{100 * cascade.robust_accuracy[attack]:.1f} % | {attacked[attack]} of {full.num_samples} |"
        )
    lines += [
        f"| **worst case** | **{100 * full.worst_case_accuracy:.1f} %** | **{100 * cascade.worst_case_accuracy:.1f} %** | |",
        "",
        f"Wall clock: full {seconds['full']:.1f} s, cascade {seconds['cascade']:.1f} s — **{speedup:.2f}× faster** "
        f"(target ≥ 2×). Worst case identical clip by clip: **{'yes' if identical else 'NO'}**.",
    ]
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print("\n" + text)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
