"""scripts/routing_relevance.py on TimeSformer-MoE (round 15) runs end to end at toy size.

Its own file so that, under ``--dist loadfile``, it does not lengthen tests/test_scripts.py, the suite's critical path.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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

    # The report tabulates the row on its own page, with the rule's verdict (seeds 1-2 missing: nothing chosen).
    page = tmp_path / "round15.md"
    result = run_script(SCRIPT, "--stage", "report", *common, "--extra-dirs", "--docs", str(page), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.read_text()
    assert f"| {row['label']} | 1 | 0 | {100 * row['after']['learned']:.1f} |" in text
    assert "Chosen:" not in text and ("fails on seed 0" in text or "seeds 1, 2 to run" in text)

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
    assert result.returncode != 0 and "--stage dense, variants and report only" in result.stderr

    # A retrained dense phase makes the rows measured on the old one stale: they are refused, not silently kept.
    assert run_script(SCRIPT, "--stage", "dense", "--dense-epochs", "1", *common, cwd=tmp_path).returncode == 0
    result = run_script(SCRIPT, "--stage", "variants", "--select", "mixture 30 ep, lr 0.001", *common, cwd=tmp_path)
    assert result.returncode != 0 and "measured on another dense phase" in result.stderr


def load_routing_relevance():
    spec = importlib.util.spec_from_file_location("routing_relevance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def round_15_row(label, dense_epochs, seed, clean, learned_minus_random, se=0.01, shares=(0.25,) * 4, epochs=30):
    return {"label": label, "dense": {"epochs": dense_epochs}, "epochs": epochs, "seed": seed, "path_share": shares,
            "after": {"learned": clean, "num_samples": 450, "learned_minus_random": learned_minus_random,
                      "learned_minus_random_se": se}}


@pytest.mark.parametrize("case", ["fails", "incomplete", "chosen", "cheaper_within_se"])
def test_round_15_rule(case):
    """Round 15's rule as written before its runs: every seed must pass (+5 points, 2 SE, every path >= 10 %); the
    best mean clean accuracy wins, the cheaper recipe within one standard error of it instead."""
    verdicts = load_routing_relevance().round_15_verdicts
    strong = [round_15_row("a", 20, seed, 0.80, 0.10) for seed in (0, 1, 2)]
    if case == "fails":
        rows = [round_15_row("a", 20, 0, 0.80, 0.04),                            # under 5 points
                round_15_row("b", 20, 0, 0.80, 0.06, se=0.04),                   # under 2 SE
                round_15_row("c", 20, 0, 0.80, 0.10, shares=(0.05, 0.3, 0.3, 0.35))]  # a path under 10 %
        summaries, chosen = verdicts(rows)
        assert chosen is None and [s["verdict"] for s in summaries] == ["fails on seed 0"] * 3
    elif case == "incomplete":
        summaries, chosen = verdicts(strong[:2] + [round_15_row("b", 40, 0, 0.70, 0.01)])
        assert chosen is None and summaries[0]["verdict"] == "passes so far; seeds 2 to run"
    elif case == "chosen":
        rows = strong + [round_15_row("b", 40, seed, 0.90, 0.10, epochs=60) for seed in (0, 1, 2)]
        summaries, chosen = verdicts(rows + [round_15_row("c", 20, 0, 0.99, 0.0)])
        assert chosen["label"] == "b" and summaries[2]["verdict"] == "fails on seed 0"
    else:  # b is better by less than one standard error (~1.1 points on 1,350 clips), a is cheaper
        rows = strong + [round_15_row("b", 40, seed, 0.805, 0.10, epochs=60) for seed in (0, 1, 2)]
        assert verdicts(rows)[1]["label"] == "a"
