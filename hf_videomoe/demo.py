"""The end-to-end demo (``hf-videomoe demo``): the paper's story in miniature on MovingShapes, on a CPU.

1. train a dense VideoMAE baseline;
2. upcycle it to VideoMAE-MoE (4 experts, top-1);
3. adversarially train two copies with the same budget: plain PGD-AT and J-TLAT;
4. attack the undefended MoE and both defended ones with PGD, TLGA-R and J-TLGA;
5. write robustness reports (JSON + Markdown), plots and a model card, and print a summary table.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, VideoMAEConfig, VideoMAEForVideoClassification

from .data import VideoCollator, make_moving_shapes
from .evaluation import compute_metrics, evaluate_robustness
from .hub import build_model_card
from .models.videomae_moe import VideoMAEMoeForVideoClassification
from .training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer

DEMO_ATTACKS = ("pgd", "tlga-r", "j-tlga")


@dataclass
class DemoSettings:
    """Sizes of the demo. The defaults finish within 15 minutes on 2 CPU cores; ``quick`` in about a minute.

    The dense recipe is the one `scripts/check_benchmark.py` shows learns MovingShapes (docs/RESULTS.md).
    """

    num_videos: int = 2400
    num_frames: int = 8
    image_size: int = 32
    difficulty: str = "easy"
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    dense_epochs: float = 30
    dense_learning_rate: float = 2e-3
    adv_epochs: float = 5
    adv_learning_rate: float = 5e-4
    adv_steps: int = 2
    eval_samples: int = 256
    eval_steps: int = 10
    batch_size: int = 32
    eps: float = 8 / 255

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(num_videos=96, num_frames=4, image_size=16, hidden_size=32, num_layers=2, num_heads=2,
                   dense_epochs=1, adv_epochs=1, adv_steps=1, eval_samples=16, eval_steps=2, batch_size=16)


def _training_arguments(output_dir: Path, settings: DemoSettings, epochs: float, learning_rate: float, seed: int,
                        **kwargs):
    return AdversarialTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=learning_rate,
        weight_decay=0.05,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        seed=seed,
        report_to=[],
        disable_tqdm=False,
        **kwargs,
    )


def run_demo(output_dir: str | Path = "outputs/demo", quick: bool = False, seed: int = 0) -> dict:
    """Run the demo and return the summary table as a dict (also written to ``output_dir/summary.json``)."""
    settings = DemoSettings.quick() if quick else DemoSettings()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timings = {}

    print(f"[1/5] MovingShapes: {settings.num_videos} clips of {settings.num_frames}x{settings.image_size}x"
          f"{settings.image_size} ({settings.difficulty})")
    data = make_moving_shapes(settings.num_videos, num_frames=settings.num_frames, image_size=settings.image_size,
                              seed=seed, difficulty=settings.difficulty)
    label_names = data["train"].features["labels"].names
    eval_set = data["test"].select(range(min(settings.eval_samples, len(data["test"]))))
    collator = VideoCollator()

    print("[2/5] Dense VideoMAE baseline")
    # The dense baseline sees raw [0, 1] pixels (mean 0, std 1), so upcycling with the same statistics is exact.
    dense = VideoMAEForVideoClassification(VideoMAEConfig(
        image_size=settings.image_size, patch_size=8 if settings.image_size >= 32 else 4,
        num_frames=settings.num_frames, tubelet_size=2, hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        intermediate_size=4 * settings.hidden_size, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
    ))
    start = time.perf_counter()
    Trainer(model=dense, args=_training_arguments(output_dir / "dense", settings, settings.dense_epochs,
                                         settings.dense_learning_rate, seed),
            train_dataset=data["train"], data_collator=collator,
            compute_metrics=compute_metrics).train()
    timings["dense"] = time.perf_counter() - start
    dense.save_pretrained(output_dir / "dense")

    print("[3/5] Upcycle to VideoMAE-MoE (4 experts, top-1)")
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense, num_experts=4, num_experts_per_tok=1, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
    )
    moe.save_pretrained(output_dir / "moe-upcycled")

    models = {"MoE (no AT)": moe.eval()}
    for name, trainer_cls, method in (("MoE + PGD-AT", AdversarialTrainer, "pgd-at"),
                                      ("MoE + J-TLAT", JTLATTrainer, "j-tlat")):
        print(f"[4/5] {name}: {settings.adv_epochs} epochs, {settings.adv_steps}-step attacks at eps=8/255")
        model = copy.deepcopy(moe).train()
        run_dir = output_dir / method
        args = _training_arguments(run_dir, settings, settings.adv_epochs, settings.adv_learning_rate, seed,
                                   adv_method=method,
                                   adv_eps=settings.eps, adv_steps=settings.adv_steps)
        start = time.perf_counter()
        trainer = trainer_cls(model=model, args=args, train_dataset=data["train"], data_collator=collator,
                              compute_metrics=compute_metrics)
        trainer.train()
        timings[method] = time.perf_counter() - start
        trainer.save_model(str(run_dir))
        models[name] = model.eval()

    print(f"[5/5] Attacks {', '.join(DEMO_ATTACKS)} at eps=8/255, {settings.eval_steps} steps, "
          f"{len(eval_set)} test clips")
    summary = {}
    for name, model in models.items():
        report = evaluate_robustness(model, eval_set, attacks=list(DEMO_ATTACKS), eps=settings.eps,
                                     steps=settings.eval_steps, seed=seed, batch_size=settings.batch_size)
        slug = name.lower().replace(" + ", "-").replace(" ", "-").replace("(", "").replace(")", "")
        report_dir = output_dir / "reports" / slug
        report_dir.mkdir(parents=True, exist_ok=True)
        report.save(report_dir / "report.json")
        (report_dir / "report.md").write_text(report.to_markdown())
        plots = report.plot(report_dir)
        card = build_model_card(report, model_name=f"videomae-moe-movingshapes-{slug}", plots=plots,
                                training_recipe={"method": name, "adv_epochs": settings.adv_epochs,
                                                 "adv_steps": settings.adv_steps, "eps": "8/255"})
        card.save(report_dir / "README.md")
        summary[name] = {
            "clean": report.clean_accuracy,
            **{attack: report.robust_accuracy[attack] for attack in DEMO_ATTACKS},
            "worst_case": report.worst_case_accuracy,
            "routing_change_tlga_r": report.routing_change.get("tlga-r"),
        }

    summary_path = output_dir / "summary.json"
    summary_path.write_text(json.dumps({"results": summary, "train_seconds": timings}, indent=2))
    print()
    print(format_summary(summary, timings))
    print(f"\nReports, plots and model cards: {output_dir / 'reports'}")
    return summary


def format_summary(summary: dict, timings: dict) -> str:
    columns = ["clean", *DEMO_ATTACKS, "worst_case"]
    lines = ["| model | " + " | ".join(columns) + " | routing change (TLGA-R) |",
             "|---" * (len(columns) + 2) + "|"]
    for name, row in summary.items():
        cells = [f"{100 * row[c]:.1f}" for c in columns]
        change = row.get("routing_change_tlga_r")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if change is None else f'{change:.2f}'} |")
    lines.append("")
    lines.append("Training seconds: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return "\n".join(lines)
