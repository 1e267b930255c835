"""Is MovingShapes learnable, and does it need time? (issue 3's learnability check; results in docs/RESULTS.md)

Trains a tiny VideoMAE-MoE from scratch on MovingShapes within a wall-clock budget and reports:

* test accuracy (target >= 80 % within 5 minutes on 2 CPU cores);
* how often a time-reversed test clip is assigned to the paired class (target >= 70 %);
* the within-pair accuracy of a frame-order-blind baseline: the same model trained and tested on clips whose frames
  are randomly permuted. A permuted clip of class c has the same distribution as a permuted clip of its time
  reversal (class c ^ 1), so this baseline cannot beat 50 % within a pair.

    python scripts/check_benchmark.py                    # full check, writes docs/learnability.json
    python scripts/check_benchmark.py --budget-seconds 30 --num-videos 400   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification
from hf_videomoe.data import VideoCollator, make_moving_shapes, paired_class


class WallClockBudget(TrainerCallback):
    """Stops training once ``seconds`` have elapsed (the check is about accuracy within a time budget)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True


class PermuteFrames:
    """Collator wrapper that shuffles each clip's frames: a frame-order-blind view of the data."""

    def __init__(self, collator, seed: int):
        self.collator = collator
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features):
        batch = self.collator(features)
        pixels = batch["pixel_values"]
        order = torch.stack([torch.randperm(pixels.shape[1], generator=self.generator) for _ in range(len(pixels))])
        batch["pixel_values"] = torch.stack([clip[perm] for clip, perm in zip(pixels, order)])
        return batch


def build_model(args, seed: int) -> VideoMAEMoeForVideoClassification:
    torch.manual_seed(seed)
    config = VideoMAEMoeConfig(
        image_size=args.image_size,
        patch_size=8,
        num_frames=args.num_frames,
        tubelet_size=2,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden_size,
        num_labels=8,
        num_experts=4,
        num_experts_per_tok=1,
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    )
    return VideoMAEMoeForVideoClassification(config)


@torch.no_grad()
def predict(model, dataset, collator, batch_size=64) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    predictions, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        predictions.append(model(batch["pixel_values"]).logits.argmax(-1))
        labels.append(batch["labels"])
    return torch.cat(predictions), torch.cat(labels)


def within_pair_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Among predictions that land in the right pair, the fraction that picks the right member."""
    in_pair = (predictions == labels) | (predictions == (labels ^ 1))
    return float((predictions == labels)[in_pair].float().mean()) if in_pair.any() else float("nan")


def train(model, data, collator, args, output_dir: Path) -> float:
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.max_epochs,
        per_device_train_batch_size=32,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        seed=args.seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        data_collator=collator,
        callbacks=[WallClockBudget(args.budget_seconds)],
    ).train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=3200)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--difficulty", default="medium")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the target is 2 cores).")
    parser.add_argument("--budget-seconds", type=float, default=300.0, help="Training wall-clock budget per model.")
    parser.add_argument("--max-epochs", type=float, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/learnability.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = make_moving_shapes(
        args.num_videos,
        num_frames=args.num_frames,
        image_size=args.image_size,
        seed=args.seed,
        difficulty=args.difficulty,
    )
    collator = VideoCollator()
    test = data["test"]
    scratch = Path("outputs/check_benchmark")

    model = build_model(args, args.seed)
    seconds = train(model, data, collator, args, scratch / "temporal")
    predictions, labels = predict(model, test, collator)
    reversed_predictions, _ = predict(model, test.with_transform(_reverse_frames), collator)
    accuracy = float((predictions == labels).float().mean())
    reversed_to_pair = float((reversed_predictions == (labels ^ 1)).float().mean())
    assert all(paired_class(int(c)) == int(c) ^ 1 for c in labels[:8])

    blind = build_model(args, args.seed)
    blind_seconds = train(blind, data, PermuteFrames(collator, args.seed), args, scratch / "order_blind")
    blind_predictions, _ = predict(blind, test, PermuteFrames(collator, args.seed + 1))

    result = {
        "command": "python scripts/check_benchmark.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"),
        "threads": torch.get_num_threads(),
        "train_clips": len(data["train"]),
        "test_clips": len(test),
        "train_seconds": round(seconds, 1),
        "test_accuracy": round(accuracy, 4),
        "within_pair_accuracy": round(within_pair_accuracy(predictions, labels), 4),
        "reversed_assigned_to_pair": round(reversed_to_pair, 4),
        "order_blind_train_seconds": round(blind_seconds, 1),
        "order_blind_test_accuracy": round(float((blind_predictions == labels).float().mean()), 4),
        "order_blind_within_pair_accuracy": round(within_pair_accuracy(blind_predictions, labels), 4),
    }
    result["targets"] = {
        "test_accuracy >= 0.80 in <= 300 s": result["test_accuracy"] >= 0.80 and seconds <= 300 + 30,
        "reversed -> paired class >= 0.70": result["reversed_assigned_to_pair"] >= 0.70,
        "order-blind within-pair <= 0.50 (+ sampling noise)": result["order_blind_within_pair_accuracy"] <= 0.55,
    }
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


def _reverse_frames(batch):
    return {
        "pixel_values": [torch.as_tensor(clip).flip(0) for clip in batch["pixel_values"]],
        "labels": batch["labels"],
    }


if __name__ == "__main__":
    main()
