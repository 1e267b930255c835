"""scripts/routing_relevance.py on TimeSformer-MoE (round 15) runs end to end at toy size.

Its own file so that, under ``--dist loadfile``, it does not lengthen tests/test_scripts.py, the suite's critical path.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from hf_videomoe.data import make_moving_shapes
from hf_videomoe.reproduction.routing_rounds import TIMESFORMER_ROUNDS, timesformer_verdicts

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO_ROOT / "scripts" / "routing_relevance.py")


def test_timesformer_round_runs_and_measures_routing_on_validation(tmp_path, run_script):
    out = str(tmp_path / "rr")
    common = ("--model-type", "timesformer", "--num-videos", "48", "--output-dir", out)
    result = run_script(SCRIPT, "--stage", "dense", "--dense-epochs", "20", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # A TimeSformer checkpoint, recorded as such for the variants.
    config = json.loads((tmp_path / "rr" / "dense" / "config.json").read_text())
    assert config["model_type"] == "timesformer"

    result = run_script(SCRIPT, "--stage", "variants", "--select", "mixture 30 ep, lr 0.001", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = (tmp_path / "rr").glob("variant_*.json")
    row = json.loads(path.read_text())
    assert row["label"].startswith("timesformer:") and row["model_type"] == "timesformer"
    assert row["epochs"] == 30 and row["dense"]["epochs"] == 20 and row["dense"]["model_type"] == "timesformer"
    num_val = len(make_moving_shapes(48, num_frames=8, image_size=32, difficulty="easy")["train"]) // 5  # last 20 %
    assert row["after"]["num_samples"] == num_val and len(row["after"]["forced"]) == 4
    assert len(row["path_share"]) == 4 and abs(sum(row["path_share"]) - 1) < 1e-5

    # The report tabulates the row on its own page, with the rule's verdict (other recipes not run: nothing chosen).
    page = tmp_path / "round15.md"
    result = run_script(SCRIPT, "--stage", "report", *common, "--extra-dirs", "--docs", str(page), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = page.read_text()
    assert f"| {row['label']} | 20 | 0 | {100 * row['after']['learned']:.1f} |" in text
    assert "| not run |" in text and "Nothing chosen yet" in text
    # A variant run with another seed than its dense phase's would be measured on the wrong backbone: refused.
    result = run_script(SCRIPT, "--stage", "variants", "--select", "timesformer", *common, "--seed", "1", cwd=tmp_path)
    assert result.returncode != 0 and "trained with seed 0, not --seed 1" in result.stderr

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


@pytest.fixture(scope="module")
def routing_relevance_script(load_script):
    return load_script("routing_relevance")


@pytest.fixture
def round_15_verdicts():
    return lambda rows: timesformer_verdicts(rows, TIMESFORMER_ROUNDS[15])


def documented_commands() -> list[str]:
    """Every ``python scripts/routing_relevance.py`` command of the docs: code-block lines, and inline code spans
    that give one whole command (a stage, and no ``--stage dense|variants``-style alternatives)."""
    commands = []
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            commands += [line for line in block.splitlines() if line.startswith("python scripts/routing_relevance.py")]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`(python scripts/routing_relevance\.py[^`]*)`", prose):
            if "--stage" in span and "|" not in span:
                commands.append(" ".join(span.split()))
    return commands


def test_every_documented_command_parses(routing_relevance_script):
    commands = documented_commands()
    assert len(commands) >= 20  # docs/history.md's commands for each round, RESULTS.md's, PROTOCOL.md's
    for command in commands:
        argv = shlex.split(command, comments=True)[2:]
        args = routing_relevance_script.parse_args([arg for arg in argv if arg != "&"])
        assert args.stage in ("dense", "variants", "at", "report"), command


MIXTURE_30 = "timesformer: model-level clustered mixture 30 ep, lr 0.001, balance 0.005"
MIXTURE_60 = "timesformer: model-level clustered mixture 60 ep, lr 0.001, balance 0.005"


def round_15_row(label, dense_epochs, seed, clean, learned_minus_random, se=0.01, shares=(0.25,) * 4, epochs=30):
    return {
        "label": label,
        "dense": {"epochs": dense_epochs, "seed": seed},
        "epochs": epochs,
        "seed": seed,
        "path_share": shares,
        "after": {
            "learned": clean,
            "random": clean - learned_minus_random,
            "learned_minus_random": learned_minus_random,
            "learned_minus_random_se": se,
        },
    }


def every_other_recipe_fails(*run):
    """Seed-0 rows that fail for every round-15 recipe but those in ``run`` ((label, dense epochs) pairs)."""
    labels = [
        MIXTURE_30,
        MIXTURE_60,
        "timesformer: model-level clustered mixture 30 ep, lr 0.002, balance 0.005",
        "timesformer: model-level clustered mixture 60 ep, lr 0.0005, balance 0.005",
    ]
    return [
        round_15_row(label, dense, 0, 0.5, 0.0) for label in labels for dense in (20, 40) if (label, dense) not in run
    ]


def test_round_15_rule_thresholds_are_inclusive(round_15_verdicts):
    """Exactly +5 points, exactly 2 SE and exactly 10 % pass; just under any of them fails."""
    edge = dict(learned_minus_random=0.05, se=0.025, shares=(0.10, 0.30, 0.30, 0.30))
    rows = [round_15_row(MIXTURE_30, 20, seed, 0.8, **edge) for seed in (0, 1, 2)]
    summaries, chosen = round_15_verdicts(rows + every_other_recipe_fails((MIXTURE_30, 20)))
    assert chosen["label"] == MIXTURE_30 and chosen["verdict"] == "passes"
    for change in (dict(learned_minus_random=0.0499), dict(se=0.0251), dict(shares=(0.0999, 0.3, 0.3, 0.3001))):
        rows[2] = round_15_row(MIXTURE_30, 20, 2, 0.8, **{**edge, **change})
        summaries, chosen = round_15_verdicts(rows + every_other_recipe_fails((MIXTURE_30, 20)))
        assert chosen is None and summaries[0]["verdict"] == "fails on seed 2"


@pytest.mark.parametrize("case", ["none_passes", "not_run", "seeds_to_run", "best", "cheaper_within_se"])
def test_round_15_rule_chooses_only_when_every_recipe_is_decided(round_15_verdicts, case):
    """The best mean clean accuracy among recipes passing on seeds 0-2 wins (a cheaper one within one standard error
    over seeds instead), and nothing is chosen while a recipe has not run or has seeds to run."""
    strong = [round_15_row(MIXTURE_30, 20, seed, clean, 0.10) for seed, clean in zip((0, 1, 2), (0.78, 0.80, 0.82))]
    if case == "none_passes":
        summaries, chosen = round_15_verdicts(every_other_recipe_fails())
        assert chosen is None and {s["verdict"] for s in summaries} == {"fails on seed 0"}
    elif case == "not_run":  # one recipe passes on every seed, another has not run: it could still win
        summaries, chosen = round_15_verdicts(strong + every_other_recipe_fails((MIXTURE_30, 20), (MIXTURE_60, 40)))
        assert chosen is None and [s["verdict"] for s in summaries].count("not run") == 1
    elif case == "seeds_to_run":
        summaries, chosen = round_15_verdicts(strong[:2] + every_other_recipe_fails((MIXTURE_30, 20)))
        assert chosen is None and "passes so far; seed 2 to run" in [s["verdict"] for s in summaries]
    else:  # MIXTURE_60 after 40 dense epochs (costlier) is 5 points or 1 point better on average
        gain = 0.05 if case == "best" else 0.01  # the standard error over seeds of the winner's mean: ~1.2 points
        costly = [
            round_15_row(MIXTURE_60, 40, seed, clean + gain, 0.10, epochs=60)
            for seed, clean in zip((0, 1, 2), (0.78, 0.80, 0.82))
        ]
        _, chosen = round_15_verdicts(strong + costly + every_other_recipe_fails((MIXTURE_30, 20), (MIXTURE_60, 40)))
        assert (chosen["label"], chosen["dense_epochs"]) == ((MIXTURE_60, 40) if case == "best" else (MIXTURE_30, 20))


@pytest.mark.parametrize(
    "problem, message",
    [
        ("duplicate", "two rows for"),
        ("seed_3", "the rounds run seeds"),
        ("dense_seed", "on the dense phase of seed 0"),
        ("dense_epochs", "is not one of this round's recipes"),
        ("no_path_share", "no path_share"),
    ],
)
def test_round_15_rule_refuses_rows_it_cannot_judge(round_15_verdicts, problem, message):
    row = round_15_row(MIXTURE_30, 20, 1, 0.8, 0.1)
    rows = {
        "duplicate": [row, {**row, "path": "elsewhere.json"}],
        "seed_3": [round_15_row(MIXTURE_30, 20, 3, 0.8, 0.1)],
        "dense_seed": [{**row, "dense": {"epochs": 20, "seed": 0}}],
        "dense_epochs": [round_15_row(MIXTURE_30, 30, 1, 0.8, 0.1)],
        "no_path_share": [{key: value for key, value in row.items() if key != "path_share"}],
    }[problem]
    with pytest.raises(ValueError, match=message):
        round_15_verdicts(rows)


@pytest.mark.parametrize("round_15", ["all_fail", "one_not_run"])
def test_round_16_counts_only_when_round_15_chose_nothing(routing_relevance_script, tmp_path, round_15):
    """Round 16 was written after round 15 failed: its choice stands only once every round-15 recipe has failed."""
    round_16 = [label for label, _ in TIMESFORMER_ROUNDS[16]]
    rows = [round_15_row(round_16[0], 40, seed, 0.8, 0.1, epochs=60) for seed in (0, 1, 2)]
    rows += [round_15_row(round_16[1], 40, 0, 0.8, 0.0, epochs=60)]
    rows += every_other_recipe_fails(*([(MIXTURE_60, 40)] if round_15 == "one_not_run" else []))
    for i, row in enumerate(rows):
        (tmp_path / f"variant_{i}.json").write_text(json.dumps({**row, "model_type": "timesformer"}))
    page = tmp_path / "page.md"
    args = argparse.Namespace(extra_dirs=[], docs=str(page))
    routing_relevance_script.stage_report_timesformer(args, tmp_path)
    decision = page.read_text().splitlines()[-1]
    if round_15 == "all_fail":
        assert decision.startswith(f"Chosen (round 16): {round_16[0]} after a dense phase of 40 epochs")
    else:
        assert decision == "Nothing chosen yet: recipes of round 15 are still to run."
