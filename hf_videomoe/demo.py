"""The end-to-end demo (``hf-videomoe demo``): the paper's story in miniature on MovingShapes, on a CPU.

1. train a dense VideoMAE baseline;
2. upcycle it to VideoMAE-MoE (the paper's mixture: 4 whole expert paths, one top-1 decision per clip; Drop-Upcycling
   so the experts differ, routers started from k-means clusters) and fine-tune the mixture without attacks, so that
   routers (straight-through gate) and experts specialise;
3. adversarially train two copies with the same budget: plain PGD-AT and J-TLAT;
4. attack the undefended MoE and both defended ones with PGD, TLGA-R and J-TLGA, with routing-relevance controls
   (learned vs random routing, forced expert paths, frozen routing);
5. write robustness reports (JSON + Markdown), plots and a model card, and print a summary table.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from transformers import Trainer, VideoMAEConfig, VideoMAEForVideoClassification

from .data import VideoCollator, make_moving_shapes, stack_pixel_values

# The seed range lives in its own module; scripts/demo_seeds.py and the tests import it from here too.
from .demo_seeds import DEMO_SEEDS_FILE, RANGE_METRICS, demo_metrics, seed_range, seed_range_verdict  # noqa: F401
from .demo_settings import DemoSettings
from .evaluation import compute_metrics, evaluate_robustness, format_eps
from .hub import build_model_card
from .hub.checkpoint_files import ROBUSTNESS_DIR, write_card_inputs, write_training_record
from .models.processing import save_processors
from .models.videomae_moe import VideoMAEMoeForVideoClassification
from .moe import cluster_routers
from .reproducibility import enable_reproducible_mode, weights_sha256
from .training import AdversarialTrainer, JTLATTrainer

DEMO_ATTACKS = ("pgd", "tlga-r", "j-tlga")
#: The adversarially trained rows: name, trainer and ``adv_method`` (also the folder of the checkpoint).
DEMO_DEFENSES = (("MoE + PGD-AT", AdversarialTrainer, "pgd-at"), ("MoE + J-TLAT", JTLATTrainer, "j-tlat"))


def run_demo(
    output_dir: str | Path = "outputs/demo",
    quick: bool = False,
    seed: int = 0,
    settings: DemoSettings | None = None,
    reproducible: bool | None = None,
) -> dict:
    """Run the demo and return the summary table as a dict (also written to ``output_dir/summary.json``).

    ``settings`` replaces the default sizes (``quick`` then has no effect). ``reproducible``: pin the numeric code
    paths first (`hf_videomoe.reproducibility`; ``hf-videomoe demo`` does by default, and may restart the process to
    do it); ``None`` follows ``HF_VIDEOMOE_REPRODUCIBLE``. ``summary.json`` records what was pinned and the
    ``weights_sha256`` fingerprint of every trained model."""
    reproducibility = enable_reproducible_mode(reproducible)
    wall_start = time.perf_counter()
    if settings is None:
        settings = DemoSettings.quick() if quick else DemoSettings()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timings, fingerprints = {}, {}

    data, eval_set = demo_data(settings, seed)
    collator = VideoCollator()
    dense, timings["dense"] = train_dense(settings, data, collator, output_dir / "dense", seed)
    fingerprints["dense"] = weights_sha256(dense)
    moe, timings["moe"] = train_mixture(dense, settings, data, collator, output_dir / "moe", seed)
    fingerprints["moe"] = weights_sha256(moe)

    models = {"MoE (no AT)": moe.eval()}
    checkpoints = {"MoE (no AT)": "moe"}  # the folder under output_dir of each evaluated model
    for name, trainer_cls, method in DEMO_DEFENSES:
        model, timings[method] = train_defense(
            moe, name, trainer_cls, method, settings, data, collator, output_dir / method, seed
        )
        fingerprints[method] = weights_sha256(model)
        models[name] = model.eval()
        checkpoints[name] = method

    summary = evaluate_demo_models(
        models,
        eval_set,
        settings,
        seed,
        output_dir,
        checkpoints,
        fingerprints=fingerprints,
        reproducibility=reproducibility,
    )
    default_settings = not quick and settings == DemoSettings()
    record = {
        "results": summary,
        "train_seconds": timings,
        "seed": seed,
        "default_settings": default_settings,
        "wall_seconds": time.perf_counter() - wall_start,
        "weights_sha256": fingerprints,
        "reproducibility": reproducibility,
    }
    (output_dir / "summary.json").write_text(json.dumps(record, indent=2))
    print()
    print(format_summary(summary, timings))
    print("Weights (sha256): " + ", ".join(f"{k} {v[:16]}" for k, v in fingerprints.items()))
    if default_settings:
        print(seed_range_verdict(summary, reproducible=reproducibility["enabled"]))
    print(
        f"\nModel cards (README.md) and reports (robustness/) next to each checkpoint: "
        f"{', '.join(str(output_dir / folder) for folder in checkpoints.values())}"
    )
    return summary


def demo_data(settings: DemoSettings, seed: int):
    """Step 1: the MovingShapes splits (a `datasets.DatasetDict`) and the test clips the attacks are evaluated on."""
    print(
        f"[1/5] MovingShapes: {settings.num_videos} clips of {settings.num_frames}x{settings.image_size}x"
        f"{settings.image_size} ({settings.difficulty})"
    )
    data = make_moving_shapes(
        settings.num_videos,
        num_frames=settings.num_frames,
        image_size=settings.image_size,
        seed=seed,
        difficulty=settings.difficulty,
    )
    return data, data["test"].select(range(min(settings.eval_samples, len(data["test"]))))


def train_dense(
    settings: DemoSettings, data, collator, checkpoint: Path, seed: int
) -> tuple[VideoMAEForVideoClassification, float]:
    """Step 2: train the dense VideoMAE baseline and save it, with its processors, to ``checkpoint``. Returns the model
    and its training seconds."""
    print("[2/5] Dense VideoMAE baseline")
    label_names = data["train"].features["labels"].names
    # The dense baseline sees raw [0, 1] pixels (mean 0, std 1), so upcycling with the same statistics is exact.
    dense = VideoMAEForVideoClassification(
        VideoMAEConfig(
            image_size=settings.image_size,
            patch_size=8 if settings.image_size >= 32 else 4,
            num_frames=settings.num_frames,
            tubelet_size=2,
            hidden_size=settings.hidden_size,
            num_hidden_layers=settings.num_layers,
            num_attention_heads=settings.num_heads,
            intermediate_size=4 * settings.hidden_size,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
    )
    start = time.perf_counter()
    args = settings.training_arguments(checkpoint, settings.dense_epochs, settings.dense_learning_rate, seed)
    Trainer(
        model=dense,
        args=args,
        train_dataset=data["train"],
        data_collator=collator,
        compute_metrics=compute_metrics,
    ).train()
    seconds = time.perf_counter() - start
    dense.save_pretrained(checkpoint)
    save_processors(checkpoint, dense.config)  # transformers writes none for a model built from a config
    return dense, seconds


def train_mixture(
    dense, settings: DemoSettings, data, collator, checkpoint: Path, seed: int
) -> tuple[VideoMAEMoeForVideoClassification, float]:
    """Step 3: upcycle ``dense`` to VideoMAE-MoE, train the mixture without attacks and save it to ``checkpoint``.
    Returns the model and its training seconds."""
    print(
        f"[3/5] Upcycle to VideoMAE-MoE (4 experts, top-1, {settings.router_granularity}-level routing, "
        f"{settings.expert_init} {settings.expert_init_ratio}) and train the mixture {settings.moe_epochs} epochs "
        "without attacks"
    )
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense,
        num_experts=4,
        num_experts_per_tok=1,
        router_granularity=settings.router_granularity,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        expert_init=settings.expert_init,
        expert_init_ratio=settings.expert_init_ratio,
        expert_init_seed=seed,
        router_aux_loss_coef=settings.router_aux_loss_coef,
    )
    if settings.cluster_router_clips:
        cluster_routers(moe, stack_pixel_values(data["train"], settings.cluster_router_clips), seed=seed)
    start = time.perf_counter()
    args = settings.training_arguments(checkpoint, settings.moe_epochs, settings.moe_learning_rate, seed)
    Trainer(model=moe.train(), args=args, train_dataset=data["train"], data_collator=collator).train()
    seconds = time.perf_counter() - start
    moe.save_pretrained(checkpoint)
    return moe, seconds


def train_defense(
    moe, name: str, trainer_cls, method: str, settings: DemoSettings, data, collator, checkpoint: Path, seed: int
) -> tuple[VideoMAEMoeForVideoClassification, float]:
    """Step 4: adversarially train a copy of ``moe`` with ``trainer_cls`` and ``adv_method=method`` and save it to
    ``checkpoint``. Returns the model and its training seconds."""
    print(
        f"[4/5] {name}: {settings.adv_epochs} epochs, {settings.adv_steps}-step attacks at "
        f"eps={format_eps(settings.eps)}"
    )
    model = copy.deepcopy(moe).train()
    args = settings.training_arguments(
        checkpoint,
        settings.adv_epochs,
        settings.adv_learning_rate,
        seed,
        adv_method=method,
        adv_eps=settings.eps,
        adv_steps=settings.adv_steps,
    )
    start = time.perf_counter()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=data["train"], data_collator=collator, compute_metrics=compute_metrics
    )
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(checkpoint))
    return model, seconds


def evaluate_demo_models(
    models: dict,
    eval_set,
    settings: DemoSettings,
    seed: int,
    output_dir: Path,
    checkpoints: dict,
    *,
    fingerprints: dict,
    reproducibility: dict,
) -> dict:
    """Step 5: attack every model of ``models`` on ``eval_set``, write its report and model card next to its checkpoint
    (``checkpoints``: each model's folder under ``output_dir``; the training record there gets the folder's
    ``fingerprints`` entry and ``reproducibility``) and return the summary table, one row per model."""
    print(
        f"[5/5] Attacks {', '.join(DEMO_ATTACKS)} at eps={format_eps(settings.eps)}, {settings.eval_steps} steps, "
        f"{len(eval_set)} test clips"
    )
    summary = {}
    for name, model in models.items():
        report = evaluate_robustness(
            model,
            eval_set,
            attacks=list(DEMO_ATTACKS),
            eps=settings.eps,
            steps=settings.eval_steps,
            seed=seed,
            batch_size=settings.batch_size,
        )
        folder = checkpoints[name]
        write_model_card(
            report,
            output_dir / folder,
            settings,
            name,
            seed,
            weights_sha256=fingerprints[folder],
            reproducibility=reproducibility,
        )
        summary[name] = {
            "clean": report.clean_accuracy,
            **{attack: report.robust_accuracy[attack] for attack in DEMO_ATTACKS},
            "worst_case": report.worst_case_accuracy,
            "routing_change_tlga_r": report.routing_change.get("tlga-r"),
            "routing_relevance": report.routing_relevance,
            "frozen_routing": report.frozen_routing,
            "flags": report.flag_names,
        }
    return summary


def write_model_card(report, checkpoint: Path, settings: DemoSettings, name: str, seed: int, **record) -> Path:
    """Write the demo's model card next to the checkpoint it describes (``checkpoint/README.md``, its snippets loading
    that folder), the report, plots and card inputs under ``checkpoint/robustness/`` (where `hf-videomoe push` finds
    them) and the training record (``checkpoint/training_recipe.json``, the card's recipe; ``record`` adds to it)."""
    report_dir = checkpoint / ROBUSTNESS_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    report.save(report_dir / "report.json")
    (report_dir / "report.md").write_text(report.to_markdown())
    plots = report.plot(report_dir)
    dataset_kwargs = {
        "num_videos": settings.num_videos,
        "num_frames": settings.num_frames,
        "image_size": settings.image_size,
        "seed": seed,
        "difficulty": settings.difficulty,
    }
    write_card_inputs(report_dir, "MovingShapes", dataset_kwargs)
    recipe = {
        "method": name,
        "adv_epochs": settings.adv_epochs,
        "adv_steps": settings.adv_steps,
        "eps": format_eps(settings.eps),
        "dense_epochs": settings.dense_epochs,
        "moe_epochs": settings.moe_epochs,
        "router_granularity": settings.router_granularity,
        "cluster_router_clips": settings.cluster_router_clips,
        "router_aux_loss_coef": settings.router_aux_loss_coef,
        "expert_init": f"{settings.expert_init} {settings.expert_init_ratio}",
        "seed": seed,
    }
    write_training_record(checkpoint, recipe, **record)
    slug = name.lower().replace(" + ", "-").replace(" ", "-").replace("(", "").replace(")", "")
    card = build_model_card(
        report,
        model_name=f"videomae-moe-movingshapes-{slug}",
        plots=plots,
        dataset_name="MovingShapes",
        dataset_kwargs=dataset_kwargs,
        training_recipe=recipe,
        model_path=str(checkpoint.resolve()),
    )
    card.save(checkpoint / "README.md")
    return checkpoint / "README.md"


def format_summary(summary: dict, timings: dict) -> str:
    columns = ["clean", *DEMO_ATTACKS, "worst_case"]
    lines = [
        "| model | " + " | ".join(columns) + " | routing change (TLGA-R) | clean, random routing | "
        "forced paths (min–max) | TLGA-R, clean routing |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for name, row in summary.items():
        cells = [f"{100 * row[c]:.1f}" for c in columns]
        change = row.get("routing_change_tlga_r")
        relevance = row.get("routing_relevance") or {}
        frozen = (row.get("frozen_routing") or {}).get("tlga-r") or {}
        random_cell = f"{100 * relevance['random']:.1f}" if relevance else "-"
        forced_cell = (
            f"{100 * min(relevance['forced']):.1f}–{100 * max(relevance['forced']):.1f}"
            if relevance.get("forced")
            else "-"
        )
        frozen_cell = f"{100 * frozen['adv_input_clean_routing']:.1f}" if frozen else "-"
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {'-' if change is None else f'{change:.2f}'} | "
            f"{random_cell} | {forced_cell} | {frozen_cell} |"
        )
    lines.append("")
    lines.append(
        "Routing relevance: clean accuracy with every routing unit sent to a random expert, and with every unit "
        "forced to one expert; 'TLGA-R, clean routing' is TLGA-R's perturbation evaluated with the routing held "
        "at the clean decisions (the damage that does not go through routing)."
    )
    flagged = {name: row["flags"] for name, row in summary.items() if row.get("flags")}
    for name, flags in flagged.items():
        lines.append(f"Reliability flags for {name}: {', '.join(flags)}.")
    lines.append("Training seconds: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return "\n".join(lines)
