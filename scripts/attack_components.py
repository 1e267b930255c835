"""Which part of the paper's attacks makes them weaker or stronger than PGD (docs/RESULTS.md §3).

Runs PGD, TLA-M and J-TLGA on one trained MoE with one piece switched at a time — the temporal step rule
(``published``, ``normalized`` or ``uniform``), the Lipschitz term (λ, whether its denominator MSE(x, x+δ) is
differentiated, one λ or a router λ_R of its own), the router term (γ2) and the loss (CE or DLR) — and prints / writes the robust accuracy of each variant (a clip counts when it is classified
correctly clean and under the attack). Default model: the seed-0 MoE AT model of ``scripts/reproduce_paper.py``, on the
same evaluation clips::

    python scripts/reproduce_paper.py                # writes outputs/reproduce/seed0/moe-at/model
    python scripts/attack_components.py              # ~5 min on one core
    python scripts/attack_components.py --model out/jtlat --eps 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from transformers import AutoModelForVideoClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import hf_videomoe  # noqa: E402, F401  (registers the MoE Auto classes)
from hf_videomoe.attacks import DEFAULT_LIPSCHITZ_WEIGHT, DEFAULT_ROUTER_LIPSCHITZ_WEIGHT, build_attack  # noqa: E402
from hf_videomoe.data import make_moving_shapes  # noqa: E402

#: The attacks as the paper prints them: the published temporal step, λ differentiated through MSE(x, x+δ), one λ for
#: the model and the router terms. The library's defaults (normalized step, fixed denominator, λ_R of its own) differ.
PAPER = {"temporal_step": "published", "lipschitz_denominator": "gradient"}
PAPER_JOINT = {**PAPER, "router_lipschitz_weight": DEFAULT_LIPSCHITZ_WEIGHT}

#: (label, attack, keyword arguments): each row changes one thing against its neighbour.
VARIANTS = [
    ("PGD (uniform step)", "pgd", {}),
    ("PGD, published temporal step", "pgd", {"temporal_step": "published"}),
    ("PGD, normalized temporal step", "pgd", {"temporal_step": "normalized"}),
    ("TLA-M as published (published step, λ on, λ through the denominator)", "tla-m", PAPER),
    ("TLA-M as published, λ = 0", "tla-m", {**PAPER, "lipschitz_weight": 0.0}),
    ("TLA-M as published, uniform step", "tla-m", {**PAPER, "temporal_step": "uniform"}),
    ("TLA-M, uniform step, λ = 0 (= PGD)", "tla-m", {"temporal_step": "uniform", "lipschitz_weight": 0.0}),
    ("TLA-M as published, fixed denominator", "tla-m", {**PAPER, "lipschitz_denominator": "fixed"}),
    ("TLA-M as published, normalized step", "tla-m", {**PAPER, "temporal_step": "normalized"}),
    ("TLA-M, library defaults (normalized step, fixed denominator)", "tla-m", {}),
    ("TLA-M, library defaults, DLR loss", "tla-m", {"loss": "dlr"}),
    ("J-TLGA as published (published step, one λ, λ through the denominator)", "j-tlga", PAPER_JOINT),
    ("J-TLGA as published, λ = 0", "j-tlga", {**PAPER_JOINT, "lipschitz_weight": 0.0, "router_lipschitz_weight": 0.0}),
    ("J-TLGA as published, uniform step", "j-tlga", {**PAPER_JOINT, "temporal_step": "uniform"}),
    (
        "J-TLGA as published, uniform step, γ2 = 0",
        "j-tlga",
        {**PAPER_JOINT, "temporal_step": "uniform", "router_weight": 0.0},
    ),
    ("J-TLGA as published, fixed denominator", "j-tlga", {**PAPER_JOINT, "lipschitz_denominator": "fixed"}),
    ("J-TLGA as published, normalized step", "j-tlga", {**PAPER_JOINT, "temporal_step": "normalized"}),
    ("J-TLGA as published, λ_R of its own", "j-tlga", {**PAPER}),
    ("J-TLGA, library defaults (normalized step, fixed denominator, λ_R)", "j-tlga", {}),
    ("J-TLGA, library defaults, DLR loss", "j-tlga", {"loss": "dlr"}),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=REPO_ROOT / "outputs" / "reproduce" / "seed0" / "moe-at" / "model"
    )
    parser.add_argument("--eps", type=float, nargs="+", default=[4.0, 8.0], help="budgets in /255 units")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=256, help="first test clips of the reproduction's data")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "attack_components.md")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        raise SystemExit(f"No model at {args.model}; run `python scripts/reproduce_paper.py` first (or pass --model).")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    model = AutoModelForVideoClassification.from_pretrained(args.model).eval()
    config = model.config
    # The data the model was trained and evaluated on: the reproduction's settings.json (<output-dir>/seedN/run/model)
    # when the model comes from scripts/reproduce_paper.py, else its defaults (2,400 easy clips, data seed 0).
    data = {"num_videos": 2400, "difficulty": "easy", "data_seed": 0}
    parents = args.model.resolve().parents
    settings_path = parents[2] / "settings.json" if len(parents) > 2 else None
    if settings_path is not None and settings_path.exists():
        data.update({key: json.loads(settings_path.read_text())[key] for key in data})
    test = make_moving_shapes(
        data["num_videos"],
        num_frames=config.num_frames,
        image_size=config.image_size,
        seed=data["data_seed"],
        difficulty=data["difficulty"],
    )["test"]
    columns = test.select(range(min(args.num_samples, len(test)))).with_format("torch")[:]
    x, y = columns["pixel_values"].float(), columns["labels"].long()

    def correct(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(pixel_values=pixels).logits.argmax(-1) == y

    clean = correct(x)
    rows = {}
    for eps in args.eps:
        for label, name, kwargs in VARIANTS:
            attack = build_attack(name, eps=eps / 255, steps=args.steps, seed=0, **kwargs)
            rows.setdefault(label, []).append((clean & correct(attack.perturb(model, x, y))).float().mean().item())
            print(f"ε={eps:g}/255  {label:75s} {100 * rows[label][-1]:5.1f} %", flush=True)
    command = "python scripts/attack_components.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    lines = [
        "# Attack components: what makes the paper's attacks weaker or stronger than PGD",
        "",
        f"Command: `{command}`",
        "",
        f"Model: `{args.model.relative_to(REPO_ROOT) if args.model.is_relative_to(REPO_ROOT) else args.model}`; "
        f"{len(y)} MovingShapes test clips (clean accuracy {100 * clean.float().mean():.1f} %); L∞, {args.steps} steps, "
        f"default step size 2.5·ε/steps, seed 0, library defaults otherwise (λ = {DEFAULT_LIPSCHITZ_WEIGHT:g}, "
        f"λ_R = {DEFAULT_ROUTER_LIPSCHITZ_WEIGHT:g}, γ1 = γ2 = 1, β = 0.9). "
        "Robust accuracy in % (lower = stronger attack).",
        "",
        "| attack variant | " + " | ".join(f"ε = {e:g}/255" for e in args.eps) + " |",
        "|---|" + "---:|" * len(args.eps),
    ]
    lines += [f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |" for label, values in rows.items()]
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
