#!/usr/bin/env python
"""Cost of one attack step against the bare cost of one forward + backward pass.

For each benchmark model (VideoMAE-MoE and TimeSformer-MoE, small "benchmark" configs) and attack (PGD, TLGA-R,
J-TLGA), time a full attack call with ``--steps`` steps and divide by the number of steps; compare with the median
time of one forward + backward w.r.t. the input (parameters frozen, eval mode — exactly what an attack step needs) on
the same model and batch. The attack's time includes everything it does once per call (validation, the clean forward
for the clean router logits / outputs, the evaluation forward of the last iterate), amortised over the steps.

Targets: PGD <= 1.10x and J-TLGA <= 1.20x a bare forward + backward per step.

Timings are medians over ``--repeats`` interleaved repeats (baseline and attacks alternate, so slow phases of a shared
machine hit all of them alike). Prints a Markdown table and writes it to ``--output`` (default docs/bench_attacks.md).

Usage:
    python scripts/bench_attacks.py                 # ~1-2 minutes on 2 CPU cores
    python scripts/bench_attacks.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hf_videomoe import (  # noqa: E402
    TimesformerMoeConfig,
    TimesformerMoeForVideoClassification,
    VideoMAEMoeConfig,
    VideoMAEMoeForVideoClassification,
)
from hf_videomoe.attacks import build_attack  # noqa: E402

ATTACK_NAMES = ("pgd", "tlga-r", "j-tlga")
TARGETS = {"pgd": 1.10, "j-tlga": 1.20}


def benchmark_models(num_frames: int, image_size: int):
    common = dict(
        image_size=image_size,
        patch_size=8,
        num_frames=num_frames,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=8,
        num_experts=4,
        num_experts_per_tok=1,
    )
    torch.manual_seed(0)
    yield "VideoMAE-MoE", VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(tubelet_size=2, **common))
    torch.manual_seed(0)
    yield "TimeSformer-MoE", TimesformerMoeForVideoClassification(TimesformerMoeConfig(**common))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step_time(model, x, y, steps: int, device) -> float:
    """Seconds per forward + backward w.r.t. the input, parameters frozen, eval mode (what an attack step runs)."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            x_adv = x.detach().clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(x_adv).logits, y, reduction="none")
            torch.autograd.grad(loss.sum(), x_adv)
        sync(device)
        return (time.perf_counter() - start) / steps
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def attack_step_time(attack, model, x, y, device) -> float:
    sync(device)
    start = time.perf_counter()
    attack.perturb(model, x, y)
    sync(device)
    return (time.perf_counter() - start) / attack.steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="attack steps per call (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads (default: torch's); 1 gives stable numbers on a busy shared CPU",
    )
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "docs" / "bench_attacks.md"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows = []
    for model_name, model in benchmark_models(args.num_frames, args.image_size):
        model.to(device).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch_size, args.num_frames, 3, args.image_size, args.image_size, generator=g).to(device)
        y = torch.randint(0, 8, (args.batch_size,), generator=g).to(device)
        attacks = {name: build_attack(name, steps=args.steps) for name in ATTACK_NAMES}
        # warm-up (allocator, kernels, lazy init)
        bare_step_time(model, x, y, 2, device)
        for attack in attacks.values():
            attack.perturb(model, x, y)
        bare, per_attack = [], {name: [] for name in attacks}
        for _ in range(args.repeats):
            bare.append(bare_step_time(model, x, y, args.steps, device))
            for name, attack in attacks.items():
                per_attack[name].append(attack_step_time(attack, model, x, y, device))
        bare_ms = 1000 * statistics.median(bare)
        for name, times in per_attack.items():
            step_ms = 1000 * statistics.median(times)
            ratio = step_ms / bare_ms
            target = TARGETS.get(name)
            verdict = "-" if target is None else (f"<= {target:.2f}x: " + ("yes" if ratio <= target else "NO"))
            rows.append((model_name, name, bare_ms, step_ms, ratio, verdict))
            print(
                f"{model_name:16s} {name:7s} bare {bare_ms:8.2f} ms  step {step_ms:8.2f} ms  {ratio:5.2f}x  {verdict}",
                flush=True,
            )

    command = "python scripts/bench_attacks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Attack cost per step",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Setup: batch {args.batch_size}, {args.num_frames} frames of {args.image_size}x{args.image_size}, patch 8, "
        f"hidden 128, 4 layers, 4 experts (top-1, token routing), {args.steps} steps per attack call, medians over "
        f"{args.repeats} interleaved repeats. Device: {device.type}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
        + f"; torch {torch.__version__}.",
        "",
        '"Bare" is one forward + backward w.r.t. the input with frozen parameters (what an attack step needs); '
        '"step" is a whole attack call divided by its number of steps, so it includes the once-per-call work (input '
        "checks, the clean forward for clean outputs / router logits, the evaluation forward of the last iterate).",
        "",
        "| model | attack | bare fwd+bwd (ms) | attack step (ms) | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for model_name, name, bare_ms, step_ms, ratio, verdict in rows:
        lines.append(f"| {model_name} | {name} | {bare_ms:.2f} | {step_ms:.2f} | {ratio:.2f}x | {verdict} |")
    if device.type == "cpu":
        lines += [
            "",
            "CPU timings on a shared machine are noisy (other jobs compete for the cores): compare ratios, "
            "not absolute times, and rerun for stable numbers. On an oversubscribed CPU pass `--threads 1`: "
            "with several intra-op threads, OpenMP synchronisation slows the small ops of these models down "
            "by up to two orders of magnitude and swamps the comparison.",
        ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
