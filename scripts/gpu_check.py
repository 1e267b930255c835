"""GPU check: both MoE models, the attacks and a few J-TLAT steps in bf16 on CUDA, in a few minutes.

    bash scripts/gpu_check.sh                      # needs one CUDA GPU; writes docs/gpu_check.md
    python scripts/gpu_check.py --device cpu --quick   # the same code paths on CPU at toy size (no numbers to keep)

Checks (each prints PASS / FAIL; the exit code is 1 if any fails):

1. VideoMAE-base and TimeSformer-base (random weights, 101 classes) upcycled to 4 experts load on the device in bf16;
   router logits stay float32; upcycling is exact (MoE vs dense logits, ``expert_init="copy"``).
2. transformers' ``grouped_mm`` experts kernel gives the same predictions as ``eager`` (logits within bf16 round-off).
3. PGD, TLGA-R, J-TLGA and APGD-CE run in bf16 and stay inside the ε-ball and the [0, 1] box; their times are recorded.
4. Three J-TLAT steps (Trainer, ``bf16=True``, activation checkpointing on) finish with a finite loss.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_scale import MODELS, dense_config  # noqa: E402  (this folder: the same models as the scale benchmark)

from hf_videomoe.attacks import build_attack  # noqa: E402

LABELS = {"videomae": "VideoMAE-base", "timesformer": "TimeSformer-base"}
ATTACKS = ("pgd", "tlga-r", "j-tlga", "apgd-ce")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes (for checking this script on a CPU)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--output", default=os.path.join("docs", "gpu_check.md"))
    return parser.parse_args(argv)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (run it on a GPU machine, or --device cpu --quick).")
        return 1
    dtype = torch.bfloat16
    checks: list[tuple[str, bool, str]] = []
    timings: list[tuple[str, str, float]] = []

    def check(label, ok, detail=""):
        checks.append((label, bool(ok), detail))
        print(f"{'PASS' if ok else 'FAIL'}  {label}  {detail}", flush=True)

    for key, moe_cls in MODELS.items():
        name = LABELS[key]
        torch.manual_seed(0)
        dense = moe_cls.dense_model_class(dense_config(key, args.quick)).eval()
        moe = moe_cls.from_dense(dense, num_experts=4, num_experts_per_tok=1).eval()
        config = moe.config
        x = torch.rand(args.batch_size, config.num_frames, 3, config.image_size, config.image_size, device=args.device)
        labels = torch.randint(0, 101, (args.batch_size,), device=args.device)

        dense, moe = dense.to(args.device, dtype), moe.to(args.device, dtype)
        mean = torch.tensor(config.image_mean, device=args.device).view(1, 1, -1, 1, 1)
        std = torch.tensor(config.image_std, device=args.device).view(1, 1, -1, 1, 1)
        with torch.no_grad():
            out = moe(x)
            reference = dense(((x - mean) / std).to(dtype)).logits
        check(
            f"{name}: router logits float32 in a bf16 model", all(r.dtype == torch.float32 for r in out.router_logits)
        )
        diff = (out.logits.float() - reference.float()).abs().max().item()
        check(f"{name}: upcycling exact in bf16 (MoE vs dense logits)", diff <= 0.05, f"max |Δ| = {diff:.4f}")

        kernel_logits = {}
        for kernel in ("eager", "grouped_mm"):
            moe.set_experts_implementation(kernel)
            with torch.no_grad():
                moe(x)  # warm-up
                label = f"forward ({kernel}), batch {args.batch_size}"
                timings.append((name, label, seconds(lambda: moe(x), args.device)))  # noqa: F821 (called before the del)
                kernel_logits[kernel] = moe(x).logits.float()
        diff = (kernel_logits["eager"] - kernel_logits["grouped_mm"]).abs().max().item()
        agree = (kernel_logits["eager"].argmax(-1) == kernel_logits["grouped_mm"].argmax(-1)).float().mean().item()
        check(
            f"{name}: grouped_mm equals eager",
            diff <= 0.05 and agree == 1.0,
            f"max |Δ logits| = {diff:.4f}, same prediction on {100 * agree:.0f} % of clips",
        )
        moe.set_experts_implementation("grouped_mm" if args.device.startswith("cuda") else "eager")

        batch = {"pixel_values": x, "labels": labels}
        for attack_name in ATTACKS:
            attack = build_attack(attack_name, eps=4 / 255, steps=args.attack_steps, seed=0)
            holder = {}
            elapsed = seconds(lambda: holder.update(adv=attack(moe, batch)["pixel_values"]), args.device)  # noqa: F821
            adv = holder["adv"]
            inside = (adv - x).abs().max().item() <= 4 / 255 + 1e-3 and adv.min() >= 0 and adv.max() <= 1
            check(
                f"{name}: {attack_name} in bf16 stays in the ε-ball and [0, 1]",
                inside and torch.isfinite(adv).all().item(),
                f"{elapsed:.2f} s for {args.attack_steps} steps",
            )
            timings.append((name, f"{attack_name}, {args.attack_steps} steps, batch {args.batch_size}", elapsed))

        check(f"{name}: J-TLAT steps in bf16 with checkpointing", *jtlat_steps(moe, x, labels, args, timings, name))
        del dense, moe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    write_report(args, checks, timings)
    failed = [label for label, ok, _ in checks if not ok]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def jtlat_steps(moe, x, labels, args, timings, name) -> tuple[bool, str]:
    from datasets import Dataset

    from hf_videomoe.training import AdversarialTrainingArguments, JTLATTrainer

    data = Dataset.from_dict({"pixel_values": x.float().cpu().numpy(), "labels": labels.cpu().tolist()})
    training_args = AdversarialTrainingArguments(
        output_dir="/tmp/gpu_check_jtlat",
        adv_method="j-tlat",
        adv_eps=4 / 255,
        adv_steps=2,
        max_steps=3,
        per_device_train_batch_size=args.batch_size,
        bf16=args.device.startswith("cuda"),
        gradient_checkpointing=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
    )
    trainer = JTLATTrainer(model=moe.float().train(), args=training_args, train_dataset=data.with_format("torch"))
    elapsed = seconds(trainer.train, args.device)
    timings.append(
        (name, f"J-TLAT, 3 optimizer steps, batch {args.batch_size} (bf16 autocast, checkpointing)", elapsed)
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    finite = bool(losses) and all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    moe.to(torch.bfloat16).eval()
    return finite, f"{elapsed:.1f} s, losses {[round(v, 3) for v in losses]}"


def write_report(args, checks, timings) -> None:
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{platform.machine()} CPU"
    lines = [
        "# GPU check" + (" (quick: toy sizes on CPU, not a measurement)" if args.quick else ""),
        "",
        f"`bash scripts/gpu_check.sh` — {device}, torch {torch.__version__}, bf16, {time.strftime('%Y-%m-%d')}.",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *[f"| {label} | {'PASS' if ok else 'FAIL'} | {detail} |" for label, ok, detail in checks],
        "",
        "| model | what | seconds |",
        "|---|---|---:|",
        *[f"| {model} | {what} | {value:.3f} |" for model, what, value in timings],
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
