"""Calibrate the three Lipschitz weights λ_F, λ_E, λ_R as a stated fraction of their cross-entropies (issue:
reproduction 2, docs/METHOD.md §2).

One λ for the model, expert and router terms left the router's term four orders of magnitude below its
cross-entropy: router probabilities move far less than logits. Here every term is measured where J-TLAT meets it —
on a trained mixture (the model J-TLAT starts from), on training clips, with J-TLAT's own training attacks (TLGA-R
examples for the router and expert steps, J-TLGA examples for the model step; 2 steps at 4/255 by default) — and each
λ is set so that λ · L_Lip is ``--fraction`` of the cross-entropy it sits next to, using the median over clips
(the ratios have heavy tails)::

    bash scripts/demo.sh                             # writes outputs/demo/moe (the demo's mixture before AT)
    python scripts/calibrate_lipschitz.py            # ~1 min on one core; writes docs/lipschitz_calibration.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from transformers import AutoModelForVideoClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_videomoe  # noqa: E402, F401  (registers the MoE Auto classes)
from hf_videomoe.attacks import build_attack  # noqa: E402
from hf_videomoe.attacks.objectives import (  # noqa: E402
    Objective,
    ce_loss,
    lipschitz_ratio,
    model_outputs,
    router_consistency_ce,
    router_lipschitz_ratio,
)
from hf_videomoe.data import make_moving_shapes  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "outputs" / "demo" / "moe")
    parser.add_argument("--eps", type=float, default=4.0, help="budget in /255 units (the demo's training budget)")
    parser.add_argument("--steps", type=int, default=2, help="steps of the training attacks (the demo's)")
    parser.add_argument("--num-samples", type=int, default=256, help="first training clips of the demo's data")
    parser.add_argument("--fraction", type=float, default=0.25, help="target λ·L_Lip / CE")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "lipschitz_calibration.md")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        raise SystemExit(f"No model at {args.model}; run `bash scripts/demo.sh` first (or pass --model).")
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = AutoModelForVideoClassification.from_pretrained(args.model).eval()
    config = model.config
    train = make_moving_shapes(
        2400, num_frames=config.num_frames, image_size=config.image_size, seed=0, difficulty="easy"
    )["train"]
    columns = train.select(range(min(args.num_samples, len(train)))).with_format("torch")[:]
    x, y = columns["pixel_values"].float(), columns["labels"].long()
    settings = {"eps": args.eps / 255, "steps": args.steps, "seed": 0, "selection": "objective"}
    # The attacks run with λ = 0 so that the examples do not depend on the weights being calibrated.
    x_router = build_attack("tlga-r", lipschitz_weight=0.0, **settings).perturb(model, x, y)
    x_model = build_attack("j-tlga", lipschitz_weight=0.0, router_lipschitz_weight=0.0, **settings).perturb(model, x, y)

    with torch.no_grad():
        clean_logits, clean_rl = model_outputs(model, x, router=True)
        _, router_rl = model_outputs(model, x_router, router=True)
        model_logits = model(pixel_values=x_model).logits.float()
        # E_i on each clip's clean top-1 path, as TLA-E and J-TLAT step 2 evaluate it (the objective's expert part).
        expert_objective = Objective(loss="ce", component="expert", lipschitz_weight=1.0)
        expert_ctx = expert_objective.prepare(model, x, y)
        clean_expert = expert_ctx.clean_expert_logits.float()
        adv_expert = expert_objective(model, x_router, expert_ctx).logits.float()
    terms = {
        "router (step 1: TLGA-R examples)": (
            router_consistency_ce(router_rl, clean_rl),
            router_lipschitz_ratio(clean_rl, router_rl, x, x_router),
        ),
        "expert (step 2: TLGA-R examples, clean top-1 path)": (
            ce_loss(adv_expert, y),
            lipschitz_ratio(clean_expert, adv_expert, x, x_router),
        ),
        "model (step 3: J-TLGA examples)": (
            ce_loss(model_logits, y),
            lipschitz_ratio(clean_logits.float(), model_logits, x, x_model),
        ),
    }
    command = "python scripts/calibrate_lipschitz.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    model_name = args.model.relative_to(REPO_ROOT) if args.model.is_relative_to(REPO_ROOT) else args.model
    lines = [
        "# Lipschitz weights calibrated as a fraction of their cross-entropy",
        "",
        f"Command: `{command}`",
        "",
        f"Model: `{model_name}`; {len(y)} MovingShapes training clips; J-TLAT's training attacks with λ = 0, "
        f"{args.steps} steps at ε = {args.eps:g}/255. Each λ = {args.fraction:g} × median CE / median L_Lip.",
        "",
        f"| term | CE (median) | L_Lip (median) | L_Lip (mean) | λ for λ·L_Lip = {args.fraction:g}·CE |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, (ce, lip) in terms.items():
        ce_median, lip_median = ce.median().item(), lip.median().item()
        weight = args.fraction * ce_median / lip_median if lip_median > 0 else float("inf")
        lines.append(f"| {label} | {ce_median:.3f} | {lip_median:.4g} | {lip.mean().item():.4g} | {weight:.3g} |")
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
