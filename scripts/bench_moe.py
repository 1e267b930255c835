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

Writes the table, the pass/fail of the targets and the command to ``--output`` (default ``docs/bench_moe.md``).

    python scripts/bench_moe.py                      # about a minute on 2 CPU cores
    python scripts/bench_moe.py --repeats 3 --no-batched-mm --output /tmp/quick.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import VideoMAEForVideoClassification  # noqa: E402

from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.evaluation import count_cost, dense_equivalent_config  # noqa: E402
from hf_videomoe.moe import selected_experts  # noqa: E402

FLOPS_TARGET = 0.40  # MoE FLOPs <= 40 % of the parameter-matched dense model
NARROW_TIME_TARGET = 1.25  # MoE time <= 1.25 x the one-expert-width dense model
MATCHED_TIME_TARGET = 0.50  # MoE time <= 0.5 x the parameter-matched dense model
GATE_TIME_TARGET = 1.02  # a gate that passes the task gradient to the router adds < 2 % to the forward time
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


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = VideoMAEMoeConfig(
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
    moe = VideoMAEMoeForVideoClassification(config).eval()
    default_impl = moe.config._experts_implementation
    narrow = VideoMAEForVideoClassification(dense_equivalent_config(config, match="active")).eval()
    matched = VideoMAEForVideoClassification(dense_equivalent_config(config, match="total")).eval()

    costs = {"moe": count_cost(moe), "narrow": count_cost(narrow), "matched": count_cost(matched)}
    pixels = torch.rand(args.batch_size, args.num_frames, 3, args.image_size, args.image_size)

    implementations = [i for i in args.implementations.split(",") if i]
    if args.no_batched_mm and "batched_mm" in implementations:
        implementations.remove("batched_mm")

    def run_moe(impl):
        def run():
            moe.set_experts_implementation(impl)
            return moe(pixels)

        return run

    variants = {
        "narrow": lambda: narrow(normalize(pixels, config)),
        "matched": lambda: matched(normalize(pixels, config)),
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
    moe.set_experts_implementation(default_impl)

    gate_times = time_gates(config, pixels, args.repeats, args.warmup)

    # Expert load of the (random-init) router: share of routing slots taken by the busiest expert, per layer.
    loads = []
    for chosen in selected_experts(router_logits, args.top_k):
        counts = torch.bincount(chosen.reshape(-1), minlength=args.num_experts).float()
        loads.append(float(counts.max() / counts.sum()))

    median_ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}

    def ratio(name, reference):
        # Median of per-round ratios (both ran in the same round, so slow phases of the machine cancel out); a
        # variant timed outside the rounds (batched_mm) falls back to the ratio of medians.
        if len(times[name]) == len(times[reference]) == args.repeats:
            return statistics.median(a / b for a, b in zip(times[name], times[reference]))
        return median_ms[name] / median_ms[reference]

    rows = []
    moe_flops = costs["moe"].flops
    for name in ["narrow", "matched"] + [f"moe:{i}" for i in implementations]:
        cost = costs[name.split(":")[0]]
        if name == "narrow":
            label = f"dense, one expert's width (intermediate {config.intermediate_size})"
        elif name == "matched":
            label = f"dense, parameter-matched (intermediate {config.intermediate_size * args.num_experts})"
        else:
            impl = name.split(":")[1]
            label = f"MoE {args.num_experts} experts top-{args.top_k}, `{impl}`" + (
                " (default)" if impl == default_impl else ""
            )
        ms = median_ms[name]
        rows.append(
            dict(
                name=name,
                label=label,
                gflops=cost.flops / 1e9,
                active=cost.active_parameters,
                total=cost.total_parameters,
                ms=ms,
                runs=len(times[name]),
                vs_narrow=ratio(name, "narrow"),
                vs_matched=ratio(name, "matched"),
            )
        )

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    flops_ratio = moe_flops / costs["matched"].flops
    lines = []
    lines.append("# MoE vs dense: FLOPs, active parameters and CPU forward time\n")
    lines.append("Generated by `scripts/bench_moe.py`. Command:\n")
    lines.append(
        "```\n"
        + " ".join(["python", "scripts/bench_moe.py", *(argv if argv is not None else sys.argv[1:])])
        + "\n```\n"
    )
    lines.append(
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; the machine is shared with other jobs, so times are medians of "
        f"{args.repeats} interleaved runs (one run of every variant per round, rotating order) and the ratio columns "
        "are medians of per-round ratios.\n"
    )
    tokens = (args.num_frames // args.tubelet_size) * (args.image_size // args.patch_size) ** 2
    lines.append(
        f"Config: VideoMAE, image {args.image_size}, patch {args.patch_size}, frames {args.num_frames}, tubelet "
        f"{args.tubelet_size} ({tokens} tokens per clip), hidden {args.hidden_size}, {args.num_layers} layers, "
        f"{args.num_heads} heads, intermediate {args.intermediate_size}; MoE: {args.num_experts} experts, "
        f"top-{args.top_k}, token routing, every layer MoE. Forward at batch {args.batch_size}, eval, no grad.\n"
    )
    lines.append(
        "| model | GFLOPs / clip | active params | total params | median forward (ms) | runs | × narrow dense | × matched dense |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['gflops']:.3f} | {row['active'] / 1e6:.2f} M | {row['total'] / 1e6:.2f} M | "
            f"{row['ms']:.1f} | {row['runs']} | {row['vs_narrow']:.2f} | {row['vs_matched']:.2f} |"
        )
    lines.append("")
    lines.append("## Targets\n")
    lines.append("| target | value | result |")
    lines.append("|---|---:|---|")
    lines.append(
        f"| MoE FLOPs ≤ {FLOPS_TARGET:.0%} of the parameter-matched dense model | {flops_ratio:.1%} | "
        f"{verdict(flops_ratio <= FLOPS_TARGET)} |"
    )
    for row in rows:
        if not row["name"].startswith("moe:"):
            continue
        impl = row["name"].split(":")[1]
        tag = f"`{impl}`" + (" (default)" if impl == default_impl else "")
        lines.append(
            f"| MoE {tag} time ≤ {NARROW_TIME_TARGET}× one-expert dense | {row['vs_narrow']:.2f}× | "
            f"{verdict(row['vs_narrow'] <= NARROW_TIME_TARGET)} |"
        )
        lines.append(
            f"| MoE {tag} time ≤ {MATCHED_TIME_TARGET}× parameter-matched dense | {row['vs_matched']:.2f}× | "
            f"{verdict(row['vs_matched'] <= MATCHED_TIME_TARGET)} |"
        )
    default_row = next(row for row in rows if row["name"] == f"moe:{default_impl}")
    all_pass = (
        flops_ratio <= FLOPS_TARGET
        and default_row["vs_narrow"] <= NARROW_TIME_TARGET
        and default_row["vs_matched"] <= MATCHED_TIME_TARGET
    )
    gate_ratios = {}
    for gate in GATES:
        for kind in ("forward", "train"):
            gate_ratios[gate, kind] = statistics.median(
                a / b for a, b in zip(gate_times[gate][kind], gate_times["renormalize"][kind])
            )
    default_gate = config.router_gate
    lines.append(
        f"| `{default_gate}` gate (default) forward time ≤ {GATE_TIME_TARGET:.2f}× `renormalize` | "
        f"{gate_ratios[default_gate, 'forward']:.3f}× | "
        f"{verdict(gate_ratios[default_gate, 'forward'] <= GATE_TIME_TARGET)} |"
    )
    all_pass = all_pass and gate_ratios[default_gate, "forward"] <= GATE_TIME_TARGET
    lines.append("")
    lines.append(f"**Default kernel (`{default_impl}`): {'all targets PASS' if all_pass else 'some targets FAIL'}.**\n")
    lines.append("## Router gates\n")
    lines.append(
        "Same weights under each gate; eager kernel; forward in eval mode without gradients, and one training "
        "forward + backward (where the gates differ: only the router's gradient). Medians over the rounds of per-round "
        "ratios to `renormalize` (the gate that sends the router no task gradient at top-1).\n"
    )
    lines.append("| gate | median forward (ms) | × renormalize | median train step (ms) | × renormalize |")
    lines.append("|---|---:|---:|---:|---:|")
    for gate in GATES:
        lines.append(
            f"| `{gate}`{' (default)' if gate == default_gate else ''} | "
            f"{1e3 * statistics.median(gate_times[gate]['forward']):.1f} | {gate_ratios[gate, 'forward']:.3f} | "
            f"{1e3 * statistics.median(gate_times[gate]['train']):.1f} | {gate_ratios[gate, 'train']:.3f} |"
        )
    lines.append("")
    lines.append("## Notes\n")
    lines.append(
        f"- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (multiply-add = 2; matmuls, convolutions and attention), "
        f"counted with the eager experts kernel so that only routed tokens count. The MoE's extra FLOPs over the "
        f"one-expert dense model are the router's: {(moe_flops - costs['narrow'].flops) / 1e6:.2f} MFLOPs per clip "
        f"({(moe_flops - costs['narrow'].flops) / costs['narrow'].flops:.2%})."
    )
    lines.append(
        "- Active parameters: total minus the (E − k)/E unselected share of every MoE layer's experts (what one token "
        "uses)."
    )
    lines.append(
        f"- Router load (random init, this batch): the busiest expert takes "
        f"{min(loads):.0%}–{max(loads):.0%} of the routing slots per layer (perfect balance: {1 / args.num_experts:.0%})."
    )
    if "batched_mm" in implementations:
        lines.append(
            "- `batched_mm` gathers one full weight matrix per token (`up_proj[expert_ids]`, tokens × intermediate × "
            "hidden floats), which is memory-bound on CPU; it was timed with "
            f"{args.batched_mm_repeats} run(s) and no warm-up. It is meant for small decode batches on GPU."
        )
    lines.append(
        f"- Timed with {torch.get_num_threads()} torch thread(s) (`--threads`, default 1): on a machine shared with "
        "other jobs, every multi-threaded op waits for its slowest thread, which inflated single runs up to 10x and "
        "distorted ratios in 2-thread runs. `--threads 0` keeps torch's default."
    )
    lines.append(
        "- The MoE default kernel is chosen per machine: `eager` (sort tokens by expert, one matmul pair per expert) "
        "when no CUDA device is available, transformers' `grouped_mm` otherwise; switch with "
        "`model.set_experts_implementation(...)`."
    )
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
