"""Reproducible mode (hf_videomoe.reproducibility): the same short training gives the same weights whichever kernels the
CPU would pick (torch's capability, MKL's code path), and different ones without the switch, so the test can fail."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# A short training in a fresh process: a tiny VideoMAE-MoE on MovingShapes, 12 AdamW steps. argv[1] says how the
# switch is turned on: "function" (enable_reproducible_mode after torch is loaded: the process restarts itself), "env"
# (HF_VIDEOMOE_REPRODUCIBLE=1, set by the caller) or "off".
TRAINING = textwrap.dedent("""
    import json, sys, time
    if sys.argv[1] == "env":
        import hf_videomoe  # first: pins in place, before torch and numpy load
    import torch
    from hf_videomoe.reproducibility import enable_reproducible_mode, reproducibility_record, weights_sha256
    if sys.argv[1] == "function":
        enable_reproducible_mode(True)
    elif sys.argv[1] == "off":
        torch.set_num_threads(1)
    from hf_videomoe import VideoMAEMoeConfig, VideoMAEMoeForVideoClassification
    from hf_videomoe.data import make_moving_shapes, stack_pixel_values
    data = make_moving_shapes(48, num_frames=4, image_size=16, seed=0)["train"]
    pixels, labels = stack_pixel_values(data).float(), torch.tensor(data["labels"])
    torch.manual_seed(0)
    model = VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(
        image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=8, num_experts=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for step in range(12):
        index = torch.arange(step * 8, step * 8 + 8) % len(labels)
        loss = model(pixel_values=pixels[index], labels=labels[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(json.dumps({"weights_sha256": weights_sha256(model), "seconds": time.perf_counter() - start,
                      "record": reproducibility_record()}))
""")

# The machine's own choices vs the portable ones, as another CPU would make them.
NATIVE = {}
PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
PINNED = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "NPY_DISABLE_CPU_FEATURES",
    "HF_VIDEOMOE_REPRODUCIBLE",
    "HF_VIDEOMOE_REPRODUCIBLE_RESTARTED",
)


def train(mode: str, extra_env: dict, tmp_path) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in PINNED}
    env.update(
        {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets"), **extra_env}
    )
    if mode == "env":
        env["HF_VIDEOMOE_REPRODUCIBLE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", TRAINING, mode], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_same_weights_whatever_kernels_the_cpu_picks(tmp_path):
    portable = train("function", PORTABLE, tmp_path)  # the switch restarts the process, then pins
    native = train("env", NATIVE, tmp_path)  # the switch pins at import, no restart
    for run in (portable, native):
        record = run["record"]
        assert record["enabled"] and record["complete"], record
        assert record["effective"]["torch_cpu_capability"] == "DEFAULT"
        assert record["effective"]["torch_deterministic_algorithms"] and record["effective"]["torch_num_threads"] == 1
    assert portable["weights_sha256"] == native["weights_sha256"]

    # Without the switch the machine's own kernels give other weights (the test would pass vacuously otherwise).
    off_portable = train("off", PORTABLE, tmp_path)
    off_native = train("off", NATIVE, tmp_path)
    print(
        {
            name: (run["weights_sha256"][:16], round(run["seconds"], 2))
            for name, run in (
                ("switch, portable env", portable),
                ("switch, native env", native),
                ("off, portable env", off_portable),
                ("off, native env", off_native),
            )
        }
    )
    if off_native["record"]["effective"]["torch_cpu_capability"] == "DEFAULT":
        pytest.skip("this CPU has no vector kernels above torch's default: nothing to pin")
    if off_native["weights_sha256"] == off_portable["weights_sha256"]:
        pytest.skip("on this CPU the native and portable kernels happen to give the same weights in 12 steps")
    assert off_native["weights_sha256"] != native["weights_sha256"]


def test_switch_off_records_nothing_pinned():
    from hf_videomoe.reproducibility import reproducibility_record

    record = reproducibility_record()
    if os.environ.get("HF_VIDEOMOE_REPRODUCIBLE") in (None, "", "0"):
        assert record["enabled"] is False and "complete" not in record


def test_weights_sha256_is_the_evaluator_fingerprint(tiny_videomae_config):
    import torch

    from hf_videomoe import VideoMAEMoeForVideoClassification
    from hf_videomoe.evaluation.state import model_fingerprint
    from hf_videomoe.reproducibility import weights_sha256

    torch.manual_seed(0)
    model = VideoMAEMoeForVideoClassification(tiny_videomae_config())
    before = weights_sha256(model)
    assert before == model_fingerprint(model)["weights_sha256"] == weights_sha256(model.state_dict())
    with torch.no_grad():  # the last bit of one weight
        weight = next(model.parameters())
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(float("inf")))
    assert weights_sha256(model) != before


def test_pinned_environment_covers_every_library():
    from hf_videomoe.reproducibility import pinned_environment

    env = pinned_environment()
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["OMP_NUM_THREADS"] == "1"
    import platform

    if platform.machine().lower() in {"x86_64", "amd64"}:
        assert env["MKL_CBWR"] == "COMPATIBLE" and env["ONEDNN_MAX_CPU_ISA"] == "SSE41"
        assert env["NPY_DISABLE_CPU_FEATURES"]


def test_demo_says_whether_a_run_falls_inside_the_seed_range(tmp_path):
    from hf_videomoe.demo import seed_range, seed_range_verdict

    def summary(seed, clean, worst):
        row = {"clean": clean, "worst_case": worst, "routing_relevance": {"random": clean - 0.1}}
        return {"seed": seed, "results": {"MoE + J-TLAT": row}, "weights_sha256": {"j-tlat": str(seed) * 64}}

    record = seed_range([summary(0, 0.70, 0.20), summary(1, 0.72, 0.22), summary(2, 0.74, 0.24)])
    stats = record["range"]["MoE + J-TLAT"]
    assert stats["clean"]["mean"] == pytest.approx(0.72) and stats["clean"]["sd"] == pytest.approx(0.02)
    assert stats["learned_minus_random"]["mean"] == pytest.approx(0.1)
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(record))
    assert "falls inside" in seed_range_verdict(summary(3, 0.73, 0.21)["results"], path=path)
    verdict = seed_range_verdict(summary(3, 0.50, 0.21)["results"], path=path)
    assert "clean 50.0 OUTSIDE [68.0, 76.0]" in verdict and "1 figure(s) fall outside" in verdict
    assert "No recorded seed range" in seed_range_verdict({}, path=tmp_path / "missing.json")
