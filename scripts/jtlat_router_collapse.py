"""J-TLAT's step-1 variants against router collapse (docs/METHOD.md, "Router collapse and the step-1 balance term").

Starts from the demo's upcycled VideoMAE-MoE (``outputs/demo/moe-upcycled``, written by ``bash scripts/demo.sh``),
trains J-TLAT with the demo's recipe once per variant of step 1, evaluates each with the demo's attacks and prints /
writes a table with the busiest expert's share of every MoE layer (1.00 = collapsed)::

    python scripts/jtlat_router_collapse.py                       # all variants, about 4 min each on one core
    python scripts/jtlat_router_collapse.py --variants balance-1.0 soft
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_videomoe.data import VideoCollator, make_moving_shapes  # noqa: E402
from hf_videomoe.demo import DEMO_ATTACKS, DemoSettings  # noqa: E402
from hf_videomoe.evaluation import evaluate_robustness  # noqa: E402
from hf_videomoe.models.videomae_moe import VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.training import JTLATTrainer  # noqa: E402

VARIANTS = {
    "paper": ("paper's step 1 (no balance term)", {"jtlat_router_balance_weight": 0.0}),
    "balance-0.1": (
        "Switch balance, weight 0.1",
        {"jtlat_router_balance": "switch", "jtlat_router_balance_weight": 0.1},
    ),
    "balance-1.0": (
        "Switch balance, weight 1.0",
        {"jtlat_router_balance": "switch", "jtlat_router_balance_weight": 1.0},
    ),
    "soft": (
        "soft target, Switch balance 0.1",
        {"jtlat_router_target": "soft", "jtlat_router_balance": "switch", "jtlat_router_balance_weight": 0.1},
    ),
    "sharp-1.0": (
        "sharp balance (τ = 0.1), weight 1.0 (default)",
        {"jtlat_router_balance": "sharp", "jtlat_router_balance_weight": 1.0},
    ),
}


def run_variant(name: str, overrides: dict, upcycled: Path, output_dir: Path, seed: int) -> dict:
    settings = DemoSettings()
    data = make_moving_shapes(
        settings.num_videos,
        num_frames=settings.num_frames,
        image_size=settings.image_size,
        seed=seed,
        difficulty=settings.difficulty,
    )
    model = VideoMAEMoeForVideoClassification.from_pretrained(upcycled)
    args = settings.training_arguments(
        output_dir / name,
        settings.adv_epochs,
        settings.adv_learning_rate,
        seed,
        adv_method="j-tlat",
        adv_eps=settings.eps,
        adv_steps=settings.adv_steps,
        **overrides,
    )
    start = time.perf_counter()
    JTLATTrainer(model=model, args=args, train_dataset=data["train"], data_collator=VideoCollator()).train()
    seconds = time.perf_counter() - start
    eval_set = data["test"].select(range(min(settings.eval_samples, len(data["test"]))))
    report = evaluate_robustness(
        model.eval(),
        eval_set,
        attacks=list(DEMO_ATTACKS),
        eps=settings.eps,
        steps=settings.eval_steps,
        seed=seed,
        batch_size=settings.batch_size,
    )
    return {
        "variant": name,
        "train_seconds": seconds,
        "clean": report.clean_accuracy,
        **report.robust_accuracy,
        "worst_case": report.worst_case_accuracy,
        "busiest_expert_share": [max(layer) for layer in report.expert_usage["clean"]],
        "routing_change_tlga_r": report.routing_change.get("tlga-r"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--upcycled", type=Path, default=REPO_ROOT / "outputs" / "demo" / "moe-upcycled")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "outputs" / "jtlat_router_collapse")
    parser.add_argument("--results-file", type=Path, default=REPO_ROOT / "docs" / "jtlat_router_collapse.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.upcycled / "model.safetensors").exists():
        raise SystemExit(f"No upcycled checkpoint at {args.upcycled}; run `bash scripts/demo.sh` first.")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    command = " ".join(["python scripts/jtlat_router_collapse.py", *(sys.argv[1:] if argv is None else argv)])
    rows = []
    for name in args.variants:
        label, overrides = VARIANTS[name]
        print(f"== {label}", flush=True)
        row = run_variant(name, overrides, args.upcycled, args.output_dir, args.seed)
        (args.output_dir / name).mkdir(parents=True, exist_ok=True)
        (args.output_dir / name / "result.json").write_text(json.dumps(row, indent=2))
        rows.append((label, row))
    lines = [
        "# J-TLAT step 1 and router collapse",
        "",
        f"Command: `{command}`",
        "",
        "Demo recipe (MovingShapes easy, VideoMAE-MoE hidden 64, 3 layers, 4 experts top-1, 5 epochs of J-TLAT with "
        "2-step attacks at ε = 8/255), from the demo's upcycled checkpoint; 256 test clips, 10-step attacks. Busiest "
        "expert share: the fraction of clean tokens routed to the most used expert, per MoE layer (1.00 = collapsed).",
        "",
        "| step 1 | clean | PGD | TLGA-R | J-TLGA | worst case | busiest expert share | routing change (TLGA-R) | train s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label, r in rows:
        share = " / ".join(f"{s:.2f}" for s in r["busiest_expert_share"])
        lines.append(
            f"| {label} | {100 * r['clean']:.1f} | {100 * r['pgd']:.1f} | {100 * r['tlga-r']:.1f} | "
            f"{100 * r['j-tlga']:.1f} | {100 * r['worst_case']:.1f} | {share} | "
            f"{r['routing_change_tlga_r']:.2f} | {r['train_seconds']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    args.results_file.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
