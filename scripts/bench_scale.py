"""Cost at real size: VideoMAE-base and TimeSformer-base upcycled to 4 experts (top-1).

For each model: parameters, GFLOPs per clip (MoE and its dense source), forward time (dense vs MoE), training-step
time and peak memory with and without activation checkpointing, one PGD attack step, one PGD-AT step and one J-TLAT
step. Each measurement runs in its own process, so peak memory is that measurement's own (on CPU: the process's peak
resident set, reported with the memory the model needs before the step; on CUDA: ``torch.cuda.max_memory_allocated``).

    python scripts/bench_scale.py                                  # CPU, float32, both models (~15 min on 2 cores)
    python scripts/bench_scale.py --device cuda --dtype bfloat16   # GPU, bf16, eager and grouped_mm kernels
    python scripts/bench_scale.py --quick                          # smoke run at 32 px, 2 layers

Weights are random (transformers' default ``VideoMAEConfig`` / ``TimesformerConfig`` with 101 classes): cost does not
depend on them. Writes a Markdown table to ``--output`` (default ``docs/bench_scale.md``, or
``docs/bench_scale_<device>.md`` off CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_videomoe import TimesformerMoeForVideoClassification, VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.attacks import build_attack  # noqa: E402
from hf_videomoe.evaluation import count_cost  # noqa: E402

#: The MoE classifiers measured; each knows the dense transformers classifier it upcycles (`dense_model_class`).
MODELS = {"videomae": VideoMAEMoeForVideoClassification, "timesformer": TimesformerMoeForVideoClassification}
MEASUREMENTS = ("cost", "forward", "train", "train_checkpointing", "attack_step", "pgd_at_step", "jtlat_step")
CHECKPOINT_MEMORY_TARGET = 0.5  # training-step memory with checkpointing <= 0.5x without
FORWARD_TARGET = 1.15  # MoE forward <= 1.15x the dense model's at top-1 (CPU)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="videomae,timesformer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--experts-implementation",
        default=None,
        help="experts kernel (default: eager on CPU, grouped_mm on CUDA; on CUDA both are timed)",
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the training-side measurements")
    parser.add_argument(
        "--forward-repeats",
        type=int,
        default=7,
        help="interleaved dense / MoE forward pairs (cheap; the ratio is noisy on a shared CPU)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="32 px, 2 layers: a smoke run, not a measurement")
    parser.add_argument(
        "--granularity", default="token", choices=("token", "frame", "clip", "model"), help=argparse.SUPPRESS
    )  # passed to the workers by --step-ratio
    parser.add_argument(
        "--step-ratio",
        action="store_true",
        help="only the PGD-AT and J-TLAT steps, with token and with model-level routing, written to "
        "docs/bench_scale_steps.md (J-TLAT's cost at matched attack steps at real size)",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "model:measurement:kernel"
    return parser.parse_args(argv)


def dense_config(name: str, quick: bool):
    """The dense model's config: transformers' defaults (the base models) with 101 classes, or toy-sized with
    ``quick``. `scripts/gpu_check.py` builds its models from the same configs."""
    kwargs = dict(num_labels=101)
    if quick:
        kwargs.update(
            image_size=32,
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=2,
            num_frames=4,
        )
    return MODELS[name].dense_model_class.config_class(**kwargs)


def build(name: str, args, kernel: str | None):
    moe_cls = MODELS[name]
    torch.manual_seed(0)
    dense = moe_cls.dense_model_class(dense_config(name, args.quick))
    moe = moe_cls.from_dense(
        dense, num_experts=4, num_experts_per_tok=1, expert_init="drop_upcycling", router_granularity=args.granularity
    )
    dtype = getattr(torch, args.dtype)
    dense = dense.to(args.device, dtype)
    moe = moe.to(args.device, dtype)
    if kernel:
        moe.set_experts_implementation(kernel)
    return dense, moe


def clip(config, args):
    size = config.image_size
    return torch.rand(args.batch_size, config.num_frames, 3, size, size, device=args.device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, args) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        fn()
        synchronize(args.device)
        times.append(time.perf_counter() - start)
    return times


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def trainer_step_seconds(moe, method: str, args) -> list[float]:
    """Wall-clock of one optimizer step of ``method`` (2-step attacks at 4/255), by the Trainer itself."""
    from datasets import Dataset

    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer

    x = clip(moe.config, args).float().cpu()
    data = Dataset.from_dict({"pixel_values": x.numpy(), "labels": [0] * len(x)}).with_format("torch")
    step_ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            synchronize(args.device)
            step_ends.append(time.perf_counter())

    # A base-size J-TLAT step takes minutes on a CPU: one warm-up step, then `repeats` timed ones in the same run.
    training_args = AdversarialTrainingArguments(
        output_dir="/tmp/bench_scale",
        adv_method=method,
        adv_eps=4 / 255,
        adv_steps=2,
        max_steps=1 + args.repeats,
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16" and args.device != "cpu",
    )
    trainer_cls = JTLATTrainer if method == "j-tlat" else AdversarialTrainer
    trainer = trainer_cls(model=moe, args=training_args, train_dataset=data, callbacks=[StepTimes()])
    trainer.train()
    return [b - a for a, b in zip(step_ends, step_ends[1:])]


def worker(args) -> dict:
    name, measurement, kernel = args.worker.split(":")
    kernel = kernel or None
    dense, moe = build(name, args, kernel)
    x = clip(moe.config, args)
    labels = torch.zeros(len(x), dtype=torch.long, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    before = resident_mb() if args.device == "cpu" else torch.cuda.memory_allocated() / 2**20
    result: dict = {"model_mb": before}
    if measurement == "cost":
        moe_cost, dense_cost = count_cost(moe.float().cpu()), count_cost(dense.float().cpu())
        result.update(
            moe_gflops=moe_cost.flops / 1e9,
            dense_gflops=dense_cost.flops / 1e9,
            active=moe_cost.active_parameters,
            total=moe_cost.total_parameters,
            dense_params=dense_cost.total_parameters,
        )
    elif measurement == "forward":
        dense.eval(), moe.eval()
        mean = torch.tensor(moe.config.image_mean, device=args.device).view(1, 1, -1, 1, 1)
        std = torch.tensor(moe.config.image_std, device=args.device).view(1, 1, -1, 1, 1)
        dense_input = ((x - mean) / std).to(getattr(torch, args.dtype))
        with torch.inference_mode():
            dense_times, moe_times = [], []
            for _ in range(args.forward_repeats):  # interleaved, so slow phases of a shared machine hit both
                dense_times += timed(lambda: dense(dense_input), argparse.Namespace(**{**vars(args), "repeats": 1}))
                moe_times += timed(lambda: moe(x), argparse.Namespace(**{**vars(args), "repeats": 1}))
        result.update(dense=dense_times, moe=moe_times)
    elif measurement in ("train", "train_checkpointing"):
        del dense
        moe.train()
        if measurement == "train_checkpointing":
            moe.gradient_checkpointing_enable()
        for param in moe.parameters():  # gradient buffers are resident in any training loop: not step memory
            param.grad = torch.zeros_like(param)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        result["model_mb"] = resident_mb() if args.device == "cpu" else torch.cuda.memory_allocated() / 2**20

        def step():
            moe(x, labels=labels).loss.backward()
            moe.zero_grad(set_to_none=False)  # keep gradient buffers: the resident baseline of a training loop

        result["seconds"] = timed(step, args)
    elif measurement == "attack_step":
        moe.eval()
        attack = build_attack("pgd", eps=4 / 255, steps=1, seed=0)
        result["seconds"] = timed(lambda: attack(moe, {"pixel_values": x, "labels": labels}), args)
    elif measurement in ("pgd_at_step", "jtlat_step"):
        del dense
        result["seconds"] = trainer_step_seconds(moe, "j-tlat" if measurement == "jtlat_step" else "pgd-at", args)
    result["peak_mb"] = peak_mb(args.device)
    return result


def run_worker(args, spec: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        spec,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--forward-repeats",
        str(args.forward_repeats),
        "--granularity",
        args.granularity,
    ]
    if args.quick:
        command.append("--quick")
    print(f"  {spec} ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values) -> float:
    return statistics.median(values)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.step_ratio:
        return step_ratio(args)
    cuda = args.device.startswith("cuda")
    kernels = (
        [args.experts_implementation]
        if args.experts_implementation
        else (["grouped_mm", "eager"] if cuda else ["eager"])
    )
    results: dict = {}
    for name in [m for m in args.models.split(",") if m]:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        print(f"{name}:", flush=True)
        results[name] = {"cost": run_worker(args, f"{name}:cost:eager")}
        for kernel in kernels:
            results[name][kernel] = {m: run_worker(args, f"{name}:{m}:{kernel}") for m in MEASUREMENTS if m != "cost"}
    text = report(args, kernels, results)
    output = args.output or os.path.join(
        "docs", "bench_scale.md" if not cuda else f"bench_scale_{args.device.split(':')[0]}.md"
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"Wrote {output}")


def step_ratio(args) -> None:
    """PGD-AT and J-TLAT optimizer steps of VideoMAE-base-MoE with token and with model-level routing."""
    kernel = args.experts_implementation or "eager"
    rows = []
    for granularity in ("token", "model"):
        args.granularity = granularity
        pgd = median(run_worker(args, f"videomae:pgd_at_step:{kernel}")["seconds"])
        jtlat = median(run_worker(args, f"videomae:jtlat_step:{kernel}")["seconds"])
        rows.append(f"| {granularity} | {pgd:.2f} | {jtlat:.2f} | {jtlat / pgd:.2f} |")
    command = " ".join(["python", "scripts/bench_scale.py", *sys.argv[1:]])
    text = (
        "\n".join(
            [
                "# J-TLAT vs PGD-AT at real size\n",
                f"Generated by `{command}`. {platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
                f"{torch.__version__}, {args.dtype}, batch {args.batch_size}, `{kernel}` experts, medians of {args.repeats} "
                "optimizer steps after one warm-up, each measurement in its own process. VideoMAE-base (16 frames, 224 px) "
                "upcycled to 4 experts, top-1; both methods with 2-step attacks at ε = 4/255 (matched attack steps).\n",
                "| routing | PGD-AT step (s) | J-TLAT step (s) | J-TLAT × PGD-AT |",
                "|---|---:|---:|---:|",
                *rows,
            ]
        )
        + "\n"
    )
    output = args.output or os.path.join("docs", "bench_scale_steps.md")
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


def report(args, kernels, results) -> str:
    cuda = args.device.startswith("cuda")
    device = torch.cuda.get_device_name(0) if cuda else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    command = " ".join(["python", "scripts/bench_scale.py", *[a for a in sys.argv[1:]]])
    lines = [
        f"# Cost at real size{' (quick smoke run: 32 px, 2 layers — not a measurement)' if args.quick else ''}\n",
        f"Generated by `{command}`. {device}, torch {torch.__version__}, {args.dtype}, batch {args.batch_size}, "
        f"medians of {args.repeats} runs after one warm-up ({args.forward_repeats} interleaved dense / MoE pairs for "
        "the forward, whose ratio is the median of per-pair ratios); each measurement in its own process.\n",
        "Models: transformers' default `VideoMAEConfig` (16 frames, 224 px, tubelet 2) and `TimesformerConfig` (8 "
        "frames, 224 px), 101 classes, random weights, upcycled with `from_dense` to 4 experts, top-1, token routing, "
        "straight-through gate, every layer MoE.\n",
        "| model | kernel | params total / active | GFLOPs per clip (MoE / dense) | forward dense (s) | forward MoE (s) | "
        "× dense | train step (s) | train step, checkpointing (s) | step memory (MB) | step memory, checkpointing "
        "(MB) | ratio | PGD step (s) | PGD-AT step (s) | J-TLAT step (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, per_model in results.items():
        cost = per_model["cost"]
        for kernel in kernels:
            r = per_model[kernel]
            forward_ratio = median(a / b for a, b in zip(r["forward"]["moe"], r["forward"]["dense"]))
            # Memory a training step needs beyond the model that is already resident (weights, and on CPU the
            # process): the activations that checkpointing trades for recomputation.
            memory = r["train"]["peak_mb"] - r["train"]["model_mb"]
            memory_ckpt = r["train_checkpointing"]["peak_mb"] - r["train_checkpointing"]["model_mb"]
            lines.append(
                f"| {name} | `{kernel}` | {cost['total'] / 1e6:.0f} M / {cost['active'] / 1e6:.0f} M | "
                f"{cost['moe_gflops']:.1f} / {cost['dense_gflops']:.1f} | {median(r['forward']['dense']):.3f} | "
                f"{median(r['forward']['moe']):.3f} | {forward_ratio:.2f} | {median(r['train']['seconds']):.2f} | "
                f"{median(r['train_checkpointing']['seconds']):.2f} | {memory:.0f} | {memory_ckpt:.0f} | "
                f"{memory_ckpt / memory:.2f} | {median(r['attack_step']['seconds']):.2f} | "
                f"{median(r['pgd_at_step']['seconds']):.2f} | {median(r['jtlat_step']['seconds']):.2f} |"
            )
            verdicts.append(
                (
                    f"{name} `{kernel}`: training-step memory with checkpointing ≤ {CHECKPOINT_MEMORY_TARGET}× without",
                    memory_ckpt / memory,
                    memory_ckpt / memory <= CHECKPOINT_MEMORY_TARGET,
                )
            )
            if not cuda:
                verdicts.append(
                    (
                        f"{name}: MoE forward ≤ {FORWARD_TARGET}× dense (top-1)",
                        forward_ratio,
                        forward_ratio <= FORWARD_TARGET,
                    )
                )
    lines += ["", "| target | value | result |", "|---|---:|---|"]
    lines += [f"| {label} | {value:.2f} | {'PASS' if ok else 'FAIL'} |" for label, value, ok in verdicts]
    lines += [
        "",
        "Step memory: the peak of one training forward + backward minus the memory resident before it (weights, "
        "gradient buffers of earlier steps and, on CPU, the process). PGD step: one attack iteration (forward + input "
        "gradient); PGD-AT and J-TLAT steps: one optimizer step of the Trainer with 2-step attacks at ε = 4/255.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
