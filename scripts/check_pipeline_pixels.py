"""Compare the pixels `pipeline("video-classification")` feeds a model with the library's own decode, file by file.

Usage:

    python scripts/check_pipeline_pixels.py VIDEO [VIDEO ...] [--num-frames 16] [--image-size 224]

It saves a tiny VideoMAE-MoE of the requested geometry (with the processors every checkpoint carries), runs the
pipeline on each video, catches the pixel_values it hands the model and prints the mean and max |difference| from
`hf_videomoe.data.read_video` on the same file; then the same for a clip of the video's first num_frames frames,
re-encoded losslessly (a clip whose frames every path reads). Where torchvision is installed the pipeline uses the video processor
(which samples the whole clip, as the library does); elsewhere it falls back to the image processor, which reads the
first frames, so long clips differ there by design (the "path" column says which one ran).
"""

from __future__ import annotations

import argparse
import tempfile

import av
import numpy as np
import torch

import hf_videomoe
from hf_videomoe.data import read_video, write_video


def pipeline_pixels(classifier, video: str) -> torch.Tensor:
    seen = {}
    forward = classifier.model.forward

    def spy(*args, **kwargs):
        seen["pixel_values"] = kwargs.get("pixel_values", args[0] if args else None)
        return forward(*args, **kwargs)

    classifier.model.forward = spy
    try:
        classifier(video)
    finally:
        classifier.model.forward = forward
    return seen["pixel_values"][0].float().cpu()


def first_frames(video: str, count: int) -> np.ndarray:
    """The first ``count`` frames, ``(count, 3, height, width)`` uint8."""
    with av.open(video) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(count), container.decode(video=0))]
    return np.stack(frames).transpose(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", help="Video files.")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()

    from transformers import pipeline

    config = hf_videomoe.VideoMAEMoeConfig(
        image_size=args.image_size,
        patch_size=16 if args.image_size % 16 == 0 else 8,
        num_frames=args.num_frames,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    with tempfile.TemporaryDirectory() as checkpoint:
        hf_videomoe.VideoMAEMoeForVideoClassification(config).save_pretrained(checkpoint)
        classifier = pipeline("video-classification", model=checkpoint)
        path = "video processor" if classifier.video_processor is not None else "image processor (fallback)"
        print("| video | pipeline path | mean abs diff | max abs diff |\n|---|---|---|---|")
        for index, video in enumerate(args.videos):
            short = f"{checkpoint}/first_frames_{index}.mp4"
            write_video(short, first_frames(video, args.num_frames), crf=0)
            for name, file in ((video, video), (f"{video}, first {args.num_frames} frames", short)):
                difference = (
                    pipeline_pixels(classifier, file) - read_video(file, args.num_frames, args.image_size)
                ).abs()
                print(f"| {name} | {path} | {difference.mean().item():.4f} | {difference.max().item():.4f} |")


if __name__ == "__main__":
    main()
