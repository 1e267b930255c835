"""scripts/routing_relevance.py on TimeSformer-MoE (round 15) runs end to end at toy size.

Its own file so that, under ``--dist loadfile``, it does not lengthen tests/test_scripts.py, the suite's critical path.
"""

from __future__ import annotations

import json
from pathlib import Path

from hf_videomoe.data import make_moving_shapes

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO_ROOT / "scripts" / "routing_relevance.py")


def test_timesformer_round_runs_and_measures_routing_on_validation(tmp_path, run_script):
    out = str(tmp_path / "rr")
    common = ("--model-type", "timesformer", "--num-videos", "48", "--output-dir", out)
    result = run_script(SCRIPT, "--stage", "dense", "--dense-epochs", "1", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # A TimeSformer checkpoint, recorded as such for the variants.
    config = json.loads((tmp_path / "rr" / "dense" / "config.json").read_text())
    assert config["model_type"] == "timesformer"

    result = run_script(SCRIPT, "--stage", "variants", "--select", "mixture 30 ep, lr 0.001", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = (tmp_path / "rr").glob("variant_*.json")
    row = json.loads(path.read_text())
    assert row["label"].startswith("timesformer:") and row["model_type"] == "timesformer"
    assert row["epochs"] == 30 and row["dense"]["epochs"] == 1 and row["dense"]["model_type"] == "timesformer"
    num_val = len(make_moving_shapes(48, num_frames=8, image_size=32, difficulty="easy")["train"]) // 5  # last 20 %
    assert row["after"]["num_samples"] == num_val and len(row["after"]["forced"]) == 4
    assert len(row["path_share"]) == 4 and abs(sum(row["path_share"]) - 1) < 1e-5

    # VideoMAE's rounds do not run on TimeSformer, round 15 not on VideoMAE, a TimeSformer checkpoint is not loaded as
    # VideoMAE, and the stages that build VideoMAE mixtures refuse another backbone rather than train VideoMAE.
    result = run_script(SCRIPT, "--stage", "variants", "--select", "round 12", *common, cwd=tmp_path)
    assert result.returncode != 0 and "no timesformer variant matches" in result.stderr
    videomae = ("--num-videos", "48", "--output-dir", out)
    result = run_script(SCRIPT, "--stage", "variants", "--select", "timesformer", *videomae, cwd=tmp_path)
    assert result.returncode != 0 and "no videomae variant matches" in result.stderr
    result = run_script(SCRIPT, "--stage", "variants", "--select", "round 12", *videomae, cwd=tmp_path)
    assert result.returncode != 0 and "holds a timesformer model, not --model-type videomae" in result.stderr
    result = run_script(SCRIPT, "--stage", "at", *common, cwd=tmp_path)
    assert result.returncode != 0 and "--stage dense and --stage variants only" in result.stderr

    # A retrained dense phase makes the rows measured on the old one stale: they are refused, not silently kept.
    assert run_script(SCRIPT, "--stage", "dense", "--dense-epochs", "1", *common, cwd=tmp_path).returncode == 0
    result = run_script(SCRIPT, "--stage", "variants", "--select", "mixture 30 ep, lr 0.001", *common, cwd=tmp_path)
    assert result.returncode != 0 and "measured on another dense phase" in result.stderr
