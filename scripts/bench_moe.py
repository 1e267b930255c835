#!/usr/bin/env python
"""Benchmark: sparse VideoMAE-MoE against the dense VideoMAE models of the same shape.

Compares, on one VideoMAE-style config,

* the MoE model (``--num-experts`` experts, top-``--top-k``, token routing), once per experts kernel;
* the dense model with one expert's width (same ``intermediate_size``: the MoE's per-token compute);
* the dense model with the MoE's parameter count (``intermediate_size x num_experts``).

For each it reports forward FLOPs per clip and active parameters (``hf_videomoe.evaluation.count_cost``) and the
median wall-clock time of an eval-mode, no-grad forward pass at ``--batch-size``. Repeats are interleaved (one
forward of every variant per round, rotating the order) because the CPU is shared. The dense models take normalised
pixels, so their timing includes the same normalisation the MoE models do inside ``forward``.

Writes the table, the pass/fail of the targets and the command to ``--output`` (default ``docs/bench_moe.md``;
``scripts/bench_moe_report.py`` writes it).

    python scripts/bench_moe.py                      # about a minute on 2 CPU cores
    python scripts/bench_moe.py --repeats 3 --no-batched-mm --output /tmp/quick.md
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_moe_report import BenchResults, gate_ratios, render_report, table_rows  # noqa: E402  (this folder)
from transformers import VideoMAEForVideoClassification  # noqa: E402

from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.evaluation import count_cost, dense_equivalent_config  # noqa: E402
from hf_videomoe.moe import selected_experts  # noqa: E402

GATES = ("renormalize", "straight_through", "switch")


def time_gates(config, pixels, repeats: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Forward (eval, no grad) and training forward+backward times of the same weights under every router gate,
    interleaved round by round like the main table."""
    models = {}
    for gate in GATES:
        torch.manual_seed(0)
        models[gate] = VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(**{**config.to_dict(), "router_gate": gate}))
    labels = torch.zeros(pixels.shape[0], dtype=torch.long)

    def forward(model):
        model.eval()
        with torch.no_grad():
            model(pixels)

    def train_step(model):
        model.train()
        model(pixels, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)

    times = {gate: {"forward": [], "train": []} for gate in GATES}
    for round_index in range(warmup + repeats):
        order = GATES[round_index % len(GATES) :] + GATES[: round_index % len(GATES)]
        for gate in order:
            for kind, fn in (("forward", forward), ("train", train_step)):
                start = time.perf_counter()
                fn(models[gate])
                if round_index >= warmup:
                    times[gate][kind].append(time.perf_counter() - start)
    return times


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--tubelet-size", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=6)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9, help="timed forwards per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--implementations",
        default="eager,grouped_mm,batched_mm",
        help="comma-separated experts kernels to time for the MoE model",
    )
    parser.add_argument(
        "--no-batched-mm",
        action="store_true",
        help="skip batched_mm (it gathers one weight matrix per token: ~1 GB per layer here)",
    )
    parser.add_argument(
        "--batched-mm-repeats",
        type=int,
        default=1,
        help="timed forwards for batched_mm, which is ~100x slower on CPU (no warmup)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default). 1 by default: on a shared machine every "
        "multi-threaded op waits for its slowest thread, so other jobs dominate the timings",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join("docs", "bench_moe.md"))
    return parser.parse_args(argv)


def normalize(pixels, config):
    mean = torch.tensor(config.image_mean).view(1, 1, -1, 1, 1)
    std = torch.tensor(config.image_std).view(1, 1, -1, 1, 1)
    return (pixels - mean) / std


def moe_config(args) -> VideoMAEMoeConfig:
    """The benchmarked VideoMAE-MoE shape: every layer MoE, token routing, 8 labels."""
    return VideoMAEMoeConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_frames=args.num_frames,
        tubelet_size=args.tubelet_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        num_labels=8,
        num_experts=args.num_experts,
        num_experts_per_tok=args.top_k,
        router_granularity="token",
    )


def time_forwards(args, moe, narrow, matched, pixels, implementations) -> tuple[dict[str, list[float]], tuple]:
    """Forward times (seconds) of every variant, interleaved round by round, and the MoE's router logits.
    ``batched_mm``, too slow on CPU for every round, is timed after them. Leaves ``moe`` on the last kernel timed."""

    def run_moe(impl):
        def run():
            moe.set_experts_implementation(impl)
            return moe(pixels)

        return run

    variants = {
        "narrow": lambda: narrow(normalize(pixels, moe.config)),
        "matched": lambda: matched(normalize(pixels, moe.config)),
    }
    for impl in implementations:
        if impl != "batched_mm":
            variants[f"moe:{impl}"] = run_moe(impl)

    times = {name: [] for name in variants}
    with torch.inference_mode():
        router_logits = moe(pixels).router_logits
        for _ in range(args.warmup):
            for fn in variants.values():
                fn()
        names = list(variants)
        for round_index in range(args.repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
        if "batched_mm" in implementations:
            times["moe:batched_mm"] = []
            for _ in range(args.batched_mm_repeats):
                start = time.perf_counter()
                run_moe("batched_mm")()
                times["moe:batched_mm"].append(time.perf_counter() - start)
    return times, router_logits


def busiest_expert_shares(router_logits, top_k: int, num_experts: int) -> list[float]:
    """Share of the routing slots taken by the busiest expert, per layer (perfect balance: ``1 / num_experts``)."""
    loads = []
    for chosen in selected_experts(router_logits, top_k):
        counts = torch.bincount(chosen.reshape(-1), minlength=num_experts).float()
        loads.append(float(counts.max() / counts.sum()))
    return loads


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = moe_config(args)
    moe = VideoMAEMoeForVideoClassification(config).eval()
    # transformers' public getter maps module paths to kernels; the whole model (path '') uses one kernel here.
    default_impl = moe.get_experts_implementation()[""]
    narrow = VideoMAEForVideoClassification(dense_equivalent_config(config, match="active")).eval()
    matched = VideoMAEForVideoClassification(dense_equivalent_config(config, match="total")).eval()

    costs = {"moe": count_cost(moe), "narrow": count_cost(narrow), "matched": count_cost(matched)}
    pixels = torch.rand(args.batch_size, args.num_frames, 3, args.image_size, args.image_size)

    implementations = [i for i in args.implementations.split(",") if i]
    if args.no_batched_mm and "batched_mm" in implementations:
        implementations.remove("batched_mm")

    times, router_logits = time_forwards(args, moe, narrow, matched, pixels, implementations)
    moe.set_experts_implementation(default_impl)
    gate_times = time_gates(config, pixels, args.repeats, args.warmup)
    results = BenchResults(
        default_impl=default_impl,
        default_gate=config.router_gate,
        implementations=implementations,
        costs=costs,
        rows=table_rows(args, config, costs, times, implementations, default_impl),
        gate_times=gate_times,
        gate_ratios=gate_ratios(gate_times),
        loads=busiest_expert_shares(router_logits, args.top_k, args.num_experts),
    )
    text = render_report(args, argv, results)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
