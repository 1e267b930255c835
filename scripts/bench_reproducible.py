"""Time cost of reproducible mode (hf_videomoe.reproducibility): seconds per training step of the demo's dense
VideoMAE and VideoMAE-MoE (batch 32, one thread), with and without the switch, in alternating fresh processes.

    python scripts/bench_reproducible.py               # 3 rounds, about 3 minutes on 2 CPU cores
    ATEN_CPU_CAPABILITY=default python scripts/bench_reproducible.py --modes off   # one pin alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

STEP = textwrap.dedent("""
    import json, sys, time
    import torch
    from hf_videomoe.reproducibility import enable_reproducible_mode
    if sys.argv[1] == "on":
        enable_reproducible_mode(True)
    torch.set_num_threads(1)
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification
    from hf_videomoe.models.videomae_moe import VideoMAEMoeForVideoClassification
    torch.manual_seed(0)
    dense = VideoMAEForVideoClassification(VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=8, tubelet_size=2, hidden_size=64, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=256, num_labels=8))
    moe = VideoMAEMoeForVideoClassification.from_dense(dense, num_experts=4, num_experts_per_tok=1,
                                                       router_granularity="model", image_mean=[0.0] * 3,
                                                       image_std=[1.0] * 3)
    x, y = torch.rand(32, 8, 3, 32, 32), torch.randint(0, 8, (32,))
    out = {}
    for name, model in (("dense", dense), ("moe", moe)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for i in range(35):
            if i == 5:
                start = time.perf_counter()
            loss = model(pixel_values=x, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        out[name] = (time.perf_counter() - start) / 30
    print(json.dumps(out))
""")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", nargs="+", choices=["off", "on"], default=["off", "on"])
    args = p.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    times: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for _ in range(args.rounds):
        for mode in args.modes:
            result = subprocess.run(
                [sys.executable, "-c", STEP, mode], env=env, capture_output=True, text=True, check=True
            )
            times[mode].append(json.loads(result.stdout.strip().splitlines()[-1]))
    print("| switch | dense VideoMAE (s/step) | VideoMAE-MoE (s/step) |")
    print("|---|---:|---:|")
    for mode, runs in times.items():
        cells = [f"{sum(r[k] for r in runs) / len(runs):.3f}" for k in ("dense", "moe")]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
