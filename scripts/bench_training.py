"""Cost and benefit of the adversarial-training methods of `hf_videomoe.training`.

1. **Seconds per training step** of clean training, PGD-AT, TRADES, AdvMoE, TLAT, J-TLAT and J-TLAT with
   ``jtlat_reuse_adversarial`` at matched attack steps, on the benchmark config (VideoMAE-MoE, 32 px, patch 8,
   8 frames, hidden 128, 4 layers, 4 experts, batch 8, 5 attack steps); timed in the same rounds, the J-TLAT
   ablations of reproduction 2 (step 4) whose computation differs from J-TLAT's, with ``one-lambda`` (the same
   computation, other λ values) as the control for timing noise.
2. **Robust accuracy** each method buys: a short run of each on MovingShapes (the grow / shrink pair, 4 frames of
   16 px, a tiny VideoMAE-MoE that clean training learns in seconds), then clean and PGD-10 accuracy at ε = 8/255
   on the test clips of the pair.

Prints a Markdown report and writes it to ``docs/bench_training.md``:

    python scripts/bench_training.py            # ~5 min on 2 CPU cores
    python scripts/bench_training.py --quick    # smoke run (~1 min), numbers are rough
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

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.data import MOVING_SHAPES_CLASSES, make_moving_shapes  # noqa: E402
from hf_videomoe.evaluation import evaluate_robustness  # noqa: E402
from hf_videomoe.reproduction.recipes import ABLATIONS  # noqa: E402
from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer  # noqa: E402

# (label, adv_method, extra arguments)
VARIANTS = [
    ("clean (none)", "none", {}),
    ("PGD-AT", "pgd-at", {}),
    ("TRADES", "trades", {}),
    ("AdvMoE", "advmoe", {}),
    ("TLAT", "tlat", {}),
    ("J-TLAT", "j-tlat", {}),
    ("J-TLAT (reuse)", "j-tlat", {"jtlat_reuse_adversarial": True}),
]
# J-TLAT ablations timed beside the methods: those that remove or change a pass, and one-lambda as the control.
TIMED_ABLATIONS = ("no-router-step", "no-expert-step", "no-model-step", "no-lipschitz", "expert-tla-e", "one-lambda")
# Only training-argument ablations: one that changes the model's config (e.g. no-aux) would need its own model here.
assert not any(ABLATIONS[name][2] for name in TIMED_ABLATIONS)
ABLATION_VARIANTS = [(f"J-TLAT {name}", "j-tlat", ABLATIONS[name][1]) for name in TIMED_ABLATIONS]
# The paper's MoE (and the demo's and the reproduction's): one router decides per clip, in the first MoE layer.
MODEL_LEVEL = {"router_granularity": "model"}
MODEL_LEVEL_VARIANTS = [
    ("PGD-AT, model-level routing", "pgd-at", {}),
    ("J-TLAT, model-level routing", "j-tlat", {}),
    ("J-TLAT (reuse), model-level routing", "j-tlat", {"jtlat_reuse_adversarial": True}),
]
BENCH_CONFIG = dict(
    image_size=32, patch_size=8, num_frames=8, tubelet_size=2, hidden_size=128, num_hidden_layers=4,
    num_attention_heads=4, intermediate_size=512, num_labels=8, num_experts=4, num_experts_per_tok=1,
)  # fmt: skip
ACCURACY_CONFIG = dict(
    image_size=16, patch_size=4, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64, num_labels=8, num_experts=4, image_mean=[0.5] * 3,
    image_std=[0.25] * 3,
)  # fmt: skip


class StepTimer(TrainerCallback):
    """Wall-clock and CPU time of every optimizer step (attacks, forward / backward passes and the update).

    With one intra-op thread the process's CPU time tracks the compute a step needs, far less affected than wall-clock
    time by other jobs on the cores, though not immune (they share caches and memory bandwidth): compare methods
    timed in the same run, not across runs.
    """

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def _trainer(method, model, args, train, callbacks=()):
    cls = JTLATTrainer if method == "j-tlat" else AdversarialTrainer
    trainer = cls(model=model, args=args, train_dataset=train, callbacks=list(callbacks))
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer


def _args(output_dir, method, **overrides):
    base = dict(
        output_dir=output_dir, adv_method=method, report_to=[], use_cpu=not torch.cuda.is_available(),
        save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    return AdversarialTrainingArguments(**{**base, **overrides})


def time_steps(workdir: Path, rounds: int, steps: int, attack_steps: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall-clock seconds per optimizer step of every method and timed J-TLAT ablation on the
    benchmark config (random clips, batch 8). They take turns (``rounds`` rounds of ``steps + 1`` steps, the first
    step of a round untimed), so that load from other jobs falls on all of them alike."""
    generator = torch.Generator().manual_seed(0)
    num = 8 * (steps + 1)
    data = Dataset.from_dict(
        {
            "pixel_values": torch.rand(num, 8, 3, 32, 32, generator=generator).numpy(),
            "labels": torch.randint(0, 8, (num,), generator=generator).tolist(),
        }
    ).with_format("torch")
    models = {}
    timed = VARIANTS + ABLATION_VARIANTS + MODEL_LEVEL_VARIANTS
    cpu, wall = ({label: [] for label, _, _ in timed} for _ in range(2))
    for round_index in range(rounds):
        for label, method, extra in timed:
            if label not in models:
                torch.manual_seed(0)
                config = {**BENCH_CONFIG, **(MODEL_LEVEL if label.endswith("model-level routing") else {})}
                models[label] = VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(**config))
            timer = StepTimer()
            args = _args(
                str(workdir / "time"), method, adv_steps=attack_steps, max_steps=steps + 1,
                per_device_train_batch_size=8, learning_rate=1e-4, seed=round_index, **extra,
            )  # fmt: skip
            _trainer(method, models[label], args, data, [timer]).train()
            cpu[label] += timer.cpu[1:]
            wall[label] += timer.wall[1:]
        print(
            f"  round {round_index + 1}/{rounds} (CPU s/step): "
            + ", ".join(f"{label} {statistics.median(v):.3f}" for label, v in cpu.items()),
            flush=True,
        )
    return {label: {"cpu": statistics.median(cpu[label]), "wall": statistics.median(wall[label])} for label in cpu}


def robust_accuracy(workdir: Path, epochs: float, attack_steps: int) -> dict[str, dict[str, float]]:
    """Train every variant for ``epochs`` on the grow / shrink pair of MovingShapes; clean and PGD-10 accuracy."""
    data = make_moving_shapes(1088, num_frames=4, image_size=16, difficulty="easy", seed=0)
    pair = {MOVING_SHAPES_CLASSES.index("grow"), MOVING_SHAPES_CLASSES.index("shrink")}
    train, test = (data[split].filter(lambda clip: int(clip["labels"]) in pair) for split in ("train", "test"))
    results = {}
    for label, method, extra in VARIANTS:
        torch.manual_seed(0)
        model = VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(**ACCURACY_CONFIG))
        args = _args(
            str(workdir / "accuracy"), method, adv_steps=attack_steps, num_train_epochs=epochs,
            per_device_train_batch_size=16, learning_rate=2e-3, warmup_steps=0.1, **extra,
        )  # fmt: skip
        start = time.perf_counter()
        trainer = _trainer(method, model, args, train)
        trainer.train()
        seconds = time.perf_counter() - start
        report = evaluate_robustness(
            model, test, ["pgd", "j-tlga"], eps=8 / 255, steps=10, batch_size=68, diagnostics=False,
            compute_cost=False, check_determinism=False, check_gradients=False, progress=False,
        )  # fmt: skip
        results[label] = {
            "clean": report.clean_accuracy,
            "pgd": report.robust_accuracy["pgd"],
            "j-tlga": report.robust_accuracy["j-tlga"],
            "worst": report.worst_case_accuracy,
            "seconds": seconds,
            "steps": trainer.state.global_step,
            "num_samples": report.num_samples,
        }
        r = results[label]
        print(f"  {label:16s} clean {r['clean']:.3f}  PGD {r['pgd']:.3f}  J-TLGA {r['j-tlga']:.3f}  ({seconds:.0f} s)",
              flush=True)  # fmt: skip
    return results


def render(times, accuracy, command, settings) -> str:
    pgd = times["PGD-AT"]["cpu"]
    ratio = {label: t["cpu"] / pgd for label, t in times.items()}
    lines = [
        "# Adversarial training: cost per step and robust accuracy",
        "",
        f"Command: `{command}` (total {settings['total_seconds'] / 60:.1f} min)",
        "",
        f"Machine: {settings['machine']}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{settings['threads']} intra-op thread(s).",
        "",
        "## Seconds per training step (matched attack steps)",
        "",
        f"VideoMAE-MoE 32 px, patch 8, 8 frames, hidden 128, 4 layers, 4 experts (top-1), batch 8, "
        f"{settings['attack_steps']} iterations per attack, ε = 8/255, random clips. Median over "
        f"{settings['rounds'] * settings['steps_per_round']} optimizer steps per method ({settings['rounds']} rounds "
        "in "
        f"which the methods take turns, {settings['steps_per_round']} timed steps each after an untimed one). CPU "
        "seconds (one thread) are the reference; wall-clock seconds depend on what else runs on the machine, and both "
        "move between runs, so compare rows of one run.",
        "",
        "| method | CPU s / step | × PGD-AT | wall s / step | attacks per step | passes with gradient after the attack "
        "|",
        "|---|---:|---:|---:|---|---|",
    ]
    passes = {
        "clean (none)": ("—", "1 (clean)"),
        "PGD-AT": ("PGD", "1 (x_adv)"),
        "TRADES": ("KL-PGD", "1 ([x, x_adv])"),
        "AdvMoE": ("PGD (alternately for experts / routers)", "1 (x_adv)"),
        "TLAT": ("TLA-M", "1 (x_adv) + clean target pass"),
        "J-TLAT": ("TLGA-R + J-TLGA", "router (x_r), 2 forced experts per clip (x_r), model (x_m) + clean targets"),
        "J-TLAT (reuse)": ("J-TLGA", "the same three steps, all on x_m"),
    }
    for label, _, _ in VARIANTS:
        t, (attacks, fwd) = times[label], passes[label]
        lines.append(f"| {label} | {t['cpu']:.3f} | {ratio[label]:.2f} | {t['wall']:.3f} | {attacks} | {fwd} |")
    jtlat = times["J-TLAT"]["cpu"]
    pgd_model = times["PGD-AT, model-level routing"]["cpu"]
    lines += [
        "",
        'The same config with model-level routing (`router_granularity="model"`: one router per clip, in the first MoE '
        "layer, so that expert i is a whole path: the paper's MoE, and the demo's and the reproduction's). Router-only "
        "passes (the TLGA-R attack's steps, J-TLAT's router step) stop after the last router "
        "(`hf_videomoe.moe.router_logits_only`; the results are bit-identical), which with model-level routing is most "
        "of the network saved:",
        "",
        "| method | CPU s / step | × PGD-AT (model-level) | wall s / step |",
        "|---|---:|---:|---:|",
    ]
    for label, _, _ in MODEL_LEVEL_VARIANTS:
        t = times[label]
        lines.append(f"| {label} | {t['cpu']:.3f} | {t['cpu'] / pgd_model:.2f} | {t['wall']:.3f} |")
    jtlat_model = times["J-TLAT, model-level routing"]["cpu"] / pgd_model
    lines += [
        "",
        f"Targets: J-TLAT ≤ 2.0 × PGD-AT (measured {ratio['J-TLAT']:.2f} × with token routing, {jtlat_model:.2f} × "
        f"with model-level routing), J-TLAT with `jtlat_reuse_adversarial` ≤ 1.5 × PGD-AT (measured "
        f"{ratio['J-TLAT (reuse)']:.2f} ×). With token routing every layer has a router, so a router-only pass saves "
        "only the last layer's experts and the classifier, and J-TLAT's two attacks per batch (TLGA-R, then J-TLGA) "
        "cost twice PGD-AT's one on their own.",
        "",
        "### J-TLAT ablations (reproduction 2, step 4; docs/RESULTS.md §7)",
        "",
        "Timed in the same rounds as the table above. `one-lambda` does J-TLAT's computation with other λ values: its "
        "distance from 1.00 × J-TLAT is one estimate of the timing noise.",
        "",
        "| ablation | what changes | CPU s / step | × J-TLAT | × PGD-AT | wall s / step |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, (label, _, _) in zip(TIMED_ABLATIONS, ABLATION_VARIANTS):
        t = times[label]
        lines.append(
            f"| `{name}` | {ABLATIONS[name][0]} | {t['cpu']:.3f} | {t['cpu'] / jtlat:.2f} | "
            f"{ratio[label]:.2f} | {t['wall']:.3f} |"
        )
    lines += [
        "",
        "## What each method buys in robust accuracy",
        "",
        f"MovingShapes, grow / shrink pair (time reversals of each other), easy, 4 frames of 16 px; VideoMAE-MoE "
        f"patch 4, hidden 32, 2 layers, 4 experts; {settings['epochs']:g} epochs of batch 16 (lr 2e-3) with "
        f"{settings['accuracy_attack_steps']}-step training attacks, same seed for every method. Accuracy on the "
        f"{next(iter(accuracy.values()))['num_samples']} test clips of the pair, ε = 8/255, 10-step attacks; worst "
        "case = clips that neither PGD nor J-TLGA fools. One seed and 68 clips: differences of a few points (one clip "
        "is 1.5 points) are noise. AdvMoE updates the shared backbone on every other step only.",
        "",
        "| method | clean | PGD-10 | J-TLGA-10 | worst case | train time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in accuracy.items():
        lines.append(
            f"| {label} | {100 * r['clean']:.1f} | {100 * r['pgd']:.1f} | {100 * r['j-tlga']:.1f} | "
            f"{100 * r['worst']:.1f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and epochs (smoke run)")
    parser.add_argument("--output", default="docs/bench_training.md")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: OpenMP spin-waiting makes small models slow on shared cores; 0 keeps "
        "torch's default)",
    )  # fmt: skip
    parser.add_argument("--workdir", default="/tmp/hf_videomoe_bench_training")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    settings = dict(
        attack_steps=5,
        rounds=2 if args.quick else 4,
        steps_per_round=2 if args.quick else 3,
        epochs=6 if args.quick else 25,
        accuracy_attack_steps=2,
        threads=torch.get_num_threads(),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
    )
    workdir = Path(args.workdir)
    command = "python scripts/bench_training.py" + (" --quick" if args.quick else "")
    if args.threads != 1:
        command += f" --threads {args.threads}"
    start = time.perf_counter()
    print("Seconds per training step:", flush=True)
    times = time_steps(workdir, settings["rounds"], settings["steps_per_round"], settings["attack_steps"])
    print("Robust accuracy:", flush=True)
    accuracy = robust_accuracy(workdir, settings["epochs"], settings["accuracy_attack_steps"])
    settings["total_seconds"] = time.perf_counter() - start
    report = render(times, accuracy, command, settings)
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
