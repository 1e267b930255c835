"""The paper's setting in one command, at real geometry (slow: run with `bash scripts/test.sh -m slow -k paper`).

A synthetic UCF-101-layout folder of PyAV-encoded H.264 clips at 320 x 240; a dense VideoMAE at base widths (hidden 768,
12 heads, intermediate 3072) with two layers, saved with a Kinetics-style processor; `hf-videomoe train --recipe
ucf101-jtlat` (16 x 224 x 224, model-level routing, J-TLAT at 8/255) for two steps with activation checkpointing; a
cascade evaluation of a few clips; a push to the loopback Hub; `pipeline("video-classification")` on the pushed repo.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_videomoe.data import write_video
from hf_videomoe.testing import LoopbackHubServer

pytestmark = pytest.mark.slow
CLASSES = ("ApplyEyeMakeup", "Biking")


@pytest.fixture(scope="module")
def ucf101(tmp_path_factory):
    root = tmp_path_factory.mktemp("UCF-101")
    (root / "ucfTrainTestlist").mkdir()
    rng = np.random.default_rng(0)
    train, test = [], []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for group in (1, 2, 3):
            video = f"{name}/v_{name}_g{group:02d}_c01.mp4"
            base = rng.integers(0, 256, size=(3, 240, 320), dtype=np.uint8)
            clip = np.stack([np.roll(base, shift=(4 * t if label else -4 * t), axis=2) for t in range(40)])
            write_video(root / video, clip, fps=25, crf=23, pix_fmt="yuv420p")
            (test if group == 3 else train).append((video, label + 1))
    lists = root / "ucfTrainTestlist"
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CLASSES)))
    (lists / "trainlist01.txt").write_text("".join(f"{v} {i}\n" for v, i in train))
    (lists / "testlist01.txt").write_text("".join(f"{v}\n" for v, _ in test))
    return root


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEImageProcessorPil

    path = tmp_path_factory.mktemp("dense-base-2-layers")
    torch.manual_seed(0)
    config = VideoMAEConfig(num_hidden_layers=2, num_labels=len(CLASSES))  # base widths, 16 x 224 x 224
    VideoMAEForVideoClassification(config).save_pretrained(path)
    VideoMAEImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        path
    )
    return path


def _cli(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "hf_videomoe.cli", *args],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env or dict(os.environ, OMP_NUM_THREADS="2"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_paper_setting_end_to_end(ucf101, dense_checkpoint, tmp_path):
    run = tmp_path / "ucf-jtlat"
    _cli(
        "train",
        "--recipe",
        "ucf101-jtlat",
        "--dataset",
        str(ucf101),
        "--dense-checkpoint",
        str(dense_checkpoint),
        "--output-dir",
        str(run),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--adv-steps",
        "1",
        "--cluster-router-clips",
        "4",
        "--bf16",
        "false",
        "--dataloader_num_workers",
        "0",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--use-cpu",
    )
    config = json.loads((run / "config.json").read_text())
    assert (config["model_type"], config["router_granularity"], config["num_frames"], config["image_size"]) == (
        "videomae_moe",
        "model",
        16,
        224,
    )
    _cli(
        "evaluate",
        "--model",
        str(run),
        "--dataset",
        str(ucf101),
        "--layout",
        "ucf101",
        "--mode",
        "cascade",
        "--attacks",
        "pgd,j-tlga",
        "--steps",
        "1",
        "--eps",
        "8/255",
        "--num-samples",
        "2",
        "--batch-size",
        "2",
    )
    report = json.loads((run / "robustness" / "report.json").read_text())
    assert report["mode"] == "cascade" and report["num_samples"] == 2

    with LoopbackHubServer() as server:
        env = server.client_env(tmp_path / "hf", OMP_NUM_THREADS="2")
        _cli("push", "--model", str(run), "--repo-id", "user/ucf-jtlat", env=env)
        assert {"model.safetensors", "video_preprocessor_config.json", "README.md"} <= set(
            server.files("user/ucf-jtlat")
        )
        video = ucf101 / "Biking" / "v_Biking_g03_c01.mp4"
        script = (
            "import json, sys, hf_videomoe\n"
            "from transformers import pipeline\n"
            "print('RESULT', json.dumps(pipeline('video-classification', model='user/ucf-jtlat')(sys.argv[1])))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, str(video)], capture_output=True, text=True, timeout=600, env=env
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert {row["label"] for row in result} == set(CLASSES)
