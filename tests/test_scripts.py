"""The reproduction scripts run end to end at toy size (their full runs are documented in docs/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hf_videomoe.reproduction.recipes import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_reproduction_and_attack_components_quick(tmp_path, run_script):
    out = tmp_path / "repro"
    result = run_script(
        str(REPO_ROOT / "scripts" / "reproduce_paper.py"),
        "--quick",
        "--threads",
        "1",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "RESULTS.md").read_text()
    for section in ("## (a) Attack strength", "## (b) Defenses", "## Ablations (J-TLAT)", "## What holds"):
        assert section in text
    # Every defense and every ablation produced a row (and the new balance ablation is among them).
    for label in (
        "Dense AT (PGD-AT)",
        "MoE AT (PGD-AT)",
        "AdvMoE-style",
        "| TLAT |",
        "| J-TLAT |",
        "MoE AT, compute-matched to J-TLAT",
        "step-1 balance: Switch loss instead of the sharp one",
        "no guidance",
        "without step 1 (router)",
        "step 2 on TLA-E examples",
        "one λ",
        "the paper's three sequential updates per batch",
    ):
        assert label in text, label
    # The verdicts rest on the protocol's paired tests.
    assert "one-sided sign test p =" in text and "McNemar per seed" in text
    ablation_verdicts = text.split("**Ablations (J-TLAT; worst-case accuracy")[1].split("\n\n")[0]
    step_verdicts = [line for line in ablation_verdicts.splitlines() if "step 1 (router) helps" in line]
    assert len(step_verdicts) == 1 and "McNemar per seed" in step_verdicts[0], ablation_verdicts
    assert "(primary endpoint)" in text
    # The page names the library versions the cached evaluations recorded (a resumed run may mix them).
    import transformers

    software = text.split("**Software recorded by the evaluations cached in the output folder:**")[1].split("\n")[0]
    assert f"transformers {transformers.__version__}: " in software
    # Table (a)'s frozen-routing controls come at every ε it was run at, not only the training ε, with their rows.
    for eps in ("4/255", "8/255", "14/255"):
        controls = text.split(f"| attack (ε={eps}; seeds 0) | robust | adversarial clip, clean routing |")[1]
        assert controls.split("\n\n")[0].count("\n| ") == 7, eps  # the paper's seven attacks
    # The per-seed figure of table (b) is written next to the results file and linked from it.
    assert "](RESULTS_defenses.png)" in text and (out / "RESULTS_defenses.png").stat().st_size > 0
    # So is the model-step family's, beside the ablation table, its caption naming the rows it shows.
    assert "![J-TLAT; J-TLAT, step 3 on PGD; J-TLAT, step 3 on TLA-M; MoE AT (PGD-AT): clean and worst-case" in text
    assert "](RESULTS_model_step.png)" in text and (out / "RESULTS_model_step.png").stat().st_size > 0
    # The mixture is built with the run's balance weight, and the protocol text says which.
    config = json.loads((out / "seed0" / "moe-upcycled" / "config.json").read_text())
    assert config["router_aux_loss_coef"] == Settings().router_aux_loss_coef
    assert f"load-balancing aux loss coefficient {Settings().router_aux_loss_coef:g} (the config default is" in text
    # A second run finds everything cached and rewrites the same tables.
    again = run_script(
        str(REPO_ROOT / "scripts" / "reproduce_paper.py"),
        "--quick",
        "--threads",
        "1",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "RESULTS.md").read_text().split("## Protocol")[1] == text.split("## Protocol")[1]

    table = tmp_path / "components.md"
    result = run_script(
        str(REPO_ROOT / "scripts" / "attack_components.py"),
        "--model",
        str(out / "seed0" / "moe-at" / "model"),
        "--eps",
        "8",
        "--steps",
        "2",
        "--num-samples",
        "8",
        "--output",
        str(table),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "variant" not in line]
    assert len(rows) == 20
    values = {row.split(" | ")[0][2:]: float(row.split(" | ")[1].strip(" |")) for row in rows}
    # The library defaults are one of the rows (docs/attack_defaults.md is this table on the demo's model).
    assert "J-TLGA, library defaults (normalized step, fixed denominator, λ_R)" in values
    # TLA-M with uniform steps and λ = 0 is PGD's objective and step rule: the same attack, the same number.
    assert values["TLA-M, uniform step, λ = 0 (= PGD)"] == values["PGD (uniform step)"]
    assert all(0.0 <= v <= 100.0 for v in values.values())


def test_gpu_check_code_paths_on_cpu(tmp_path, run_script):
    """The GPU check's code paths (bf16 models, kernels, attacks, J-TLAT with checkpointing) at toy size on CPU."""
    report = tmp_path / "gpu_check.md"
    result = run_script(
        str(REPO_ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick", "--output", str(report), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    assert "FAIL" not in text and text.count("| PASS |") == 16


def test_gpu_check_refuses_without_cuda(tmp_path, run_script):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_script(str(REPO_ROOT / "scripts" / "gpu_check.py"), "--output", str(tmp_path / "x.md"), cwd=tmp_path)
    assert result.returncode == 1 and "no CUDA device" in result.stdout


def test_structure_targets_hold(run_script):
    """The structure targets (scripts/check_structure.py): no import loop (every import counted), no module over 420
    lines, no script over 400, no function over 120 lines, no public function over 15 parameters, no private name
    imported across modules."""
    result = run_script(str(REPO_ROOT / "scripts" / "check_structure.py"), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout


def test_structure_check_finds_violations(tmp_path, load_script):
    module = load_script("check_structure")
    package = tmp_path / "hf_videomoe"
    package.mkdir()
    (tmp_path / "scripts").mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n_secret = 1\n")
    (package / "b.py").write_text("from .a import _secret\nthing = 2\n" + "x = 1\n" * 600)
    result = module.check(tmp_path)
    assert result["import_cycles"] == [["hf_videomoe.a", "hf_videomoe.b"]]
    assert list(result["long_modules"]) == ["hf_videomoe/b.py"]
    assert any("_secret" in line for line in result["private_imports"])


def test_calibration_and_cascade_benchmark_quick(tmp_path, run_script):
    """scripts/calibrate_lipschitz.py and scripts/bench_cascade.py on the quick reproduction's models."""
    out = tmp_path / "repro"
    result = run_script(
        str(REPO_ROOT / "scripts" / "reproduce_paper.py"),
        "--quick",
        "--threads",
        "1",
        "--skip-ablations",
        "--output-dir",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    calibration = tmp_path / "calibration.md"
    result = run_script(
        str(REPO_ROOT / "scripts" / "calibrate_lipschitz.py"),
        "--model",
        str(out / "seed0" / "moe-upcycled"),
        "--num-samples",
        "8",
        "--output",
        str(calibration),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in calibration.read_text().splitlines() if line.startswith("| ") and "term" not in line]
    assert [row.split(" | ")[0][2:].split(" ")[0] for row in rows] == ["router", "expert", "model"]
    bench = tmp_path / "cascade.md"
    result = run_script(
        str(REPO_ROOT / "scripts" / "bench_cascade.py"),
        "--model",
        str(out / "seed0" / "moe-at" / "model"),
        "--num-samples",
        "8",
        "--steps",
        "1",
        "--output",
        str(bench),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert "Worst case identical clip by clip: **yes**" in bench.read_text()


def test_reproduction_resumes_from_its_tracked_cache(tmp_path, run_script):
    """The run's cache under version control (results/reproduction2/.gitignore) keeps the JSON results and compressed
    reports, no weights: a fresh clone resumes from it, retraining (in reproducible mode, the default) the checkpoints
    it needs to their recorded fingerprints and refusing weights other than the recorded ones."""
    import shutil

    from hf_videomoe.reproduction.recipes import CACHE_GITIGNORE

    script = str(REPO_ROOT / "scripts" / "reproduce_paper.py")
    out = tmp_path / "run"
    result = run_script(
        script,
        "--quick",
        "--threads",
        "1",
        "--output-dir",
        str(out),
        "--defenses",
        "moe-at",
        "j-tlat",
        "--attack-table-seeds",
        "--skip-ablations",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seed_dir = out / "seed0"
    # Only the rows asked for ran; table (a) at the training ε is MoE AT's own evaluation and is collected with it.
    assert sorted(p.name for p in seed_dir.iterdir()) == ["dense-clean", "j-tlat", "moe-at", "moe-upcycled"]
    assert (seed_dir / "moe-at" / "attack-table-eps4.json").exists()
    assert not (seed_dir / "moe-at" / "attack-table-eps8.json").exists()
    # The mixture's balance before adversarial training is recorded (per layer, shares of the routing units).
    usage = json.loads((seed_dir / "moe-upcycled" / "train.json").read_text())["expert_usage"]
    assert len(usage) == Settings.quick().num_layers and all(abs(sum(layer) - 1) < 1e-4 for layer in usage)
    # A finished evaluation leaves its report, not its per-batch state.
    assert not (seed_dir / "j-tlat" / "report-eps4-state").exists()
    # The run writes the ignore rules of the tracked cache (one source: results/reproduction2's is that text).
    assert (out / ".gitignore").read_text() == CACHE_GITIGNORE
    assert (REPO_ROOT / "results" / "reproduction2" / ".gitignore").read_text() == CACHE_GITIGNORE

    # No finished evaluation leaves its row's weights marked for keeping.
    assert not list(seed_dir.glob("*/model/.gitignore"))

    # What git keeps of that folder (an evaluation still running leaves per-batch state; weights are never kept).
    running = seed_dir / "advmoe" / "report-eps4-state"
    (running / "batches").mkdir(parents=True)
    (running / "settings.json").write_text("{}")
    (running / "batches" / "batch_0000000.json").write_text("{}")
    (running.parent / "model").mkdir()
    (running.parent / "model" / "model.safetensors").write_bytes(b"")
    git = ["git", "-c", "core.excludesFile=/dev/null", "-C", str(out)]
    subprocess.run(["git", "init", "-q", str(out)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    kept = subprocess.run([*git, "ls-files"], check=True, capture_output=True, text=True).stdout.split()
    assert all(name.endswith((".json", ".json.gz", ".gitignore")) for name in kept), kept
    for name in (
        "seed0/moe-at/result.json",
        "seed0/dense-clean/train.json",
        "seed0/moe-at/attacks-eps4.json.gz",
        "seed0/moe-at/attack-table-eps4.json",
        "seed0/j-tlat/report-eps4.json.gz",
        "seed0/moe-at/attacks-eps4.seconds.json",
        "seed0/advmoe/report-eps4-state/batches/batch_0000000.json",
    ):
        assert name in kept, name
    assert not any(name.endswith(".safetensors") or "trainer" in name or "/model/" in name for name in kept), kept
    shutil.rmtree(running.parent)
    kept = [name for name in kept if not name.startswith("seed0/advmoe/")]

    def fresh_clone(name):
        clone = tmp_path / name
        for relative in kept:
            (clone / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / relative, clone / relative)
        return clone

    clone = fresh_clone("clone")
    moe_at_result = (clone / "seed0" / "moe-at" / "result.json").read_text()
    # J-TLAT as if the machine had gone after its training, before its evaluation finished.
    jtlat_result = json.loads((clone / "seed0" / "j-tlat" / "result.json").read_text())
    (clone / "seed0" / "j-tlat" / "result.json").unlink()
    (clone / "seed0" / "j-tlat" / "report-eps4.json.gz").unlink()
    result = run_script(
        script,
        "--quick",
        "--threads",
        "1",
        "--output-dir",
        str(clone),
        "--defenses",
        "moe-at",
        "j-tlat",
        "advmoe",
        "--attack-table-seeds",
        "0",
        "--skip-ablations",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Finished rows are read, not rerun; J-TLAT, the new row and table (a) at the other ε start from retrained
    # checkpoints that match the recorded weights, and J-TLAT's evaluation gives the same result as the first time.
    assert (clone / "seed0" / "moe-at" / "result.json").read_text() == moe_at_result
    assert "table (a) attacks on MoE AT at ε=4/255" not in result.stdout
    assert (clone / "seed0" / "advmoe" / "result.json").exists()
    assert (clone / "seed0" / "moe-at" / "attack-table-eps8.json").exists()
    for checkpoint in ("dense-clean", "moe-upcycled", "moe-at/model", "j-tlat/model"):  # no weights came with the clone
        assert f"{checkpoint}: retrained, same weights as recorded" in result.stdout, checkpoint
    rerun = json.loads((clone / "seed0" / "j-tlat" / "result.json").read_text())
    assert {k: v for k, v in rerun.items() if k != "eval_seconds"} == {
        k: v for k, v in jtlat_result.items() if k != "eval_seconds"
    }
    # --status reads the same files: every job of that plan is done; the full protocol's plan is not.
    status = run_script(
        script,
        "--quick",
        "--output-dir",
        str(clone),
        "--status",
        "--defenses",
        "moe-at",
        "j-tlat",
        "advmoe",
        "--attack-table-seeds",
        "0",
        "--skip-ablations",
        cwd=tmp_path,
    )
    assert status.returncode == 0 and "| 0 | 6 / 6 |" in status.stdout, status.stdout + status.stderr
    status = run_script(script, "--quick", "--output-dir", str(clone), "--status", cwd=tmp_path)
    from hf_videomoe.reproduction import ABLATIONS

    full_plan = 9 + len(ABLATIONS)  # 6 defense rows, table (a) at 3 budgets, one job per ablation
    assert f"| 0 | 6 / {full_plan} |" in status.stdout and "defense dense-at" in status.stdout, status.stdout

    # A retrained checkpoint with other weights than recorded (as on another kind of machine, had its weights not been
    # kept) stops the run, saves nothing, and stops it again on the next try; so does a recorded checkpoint without a
    # fingerprint (its retrained weights cannot be checked).
    for name, edit in (
        ("tampered", lambda info: {**info, "weights_fingerprint": "0" * 64}),
        ("unchecked", lambda info: {k: v for k, v in info.items() if k != "weights_fingerprint"}),
    ):
        clone = fresh_clone(name)
        (clone / "seed0" / "moe-upcycled" / "model.safetensors").unlink(missing_ok=True)
        info_path = clone / "seed0" / "moe-upcycled" / "train.json"
        info_path.write_text(json.dumps(edit(json.loads(info_path.read_text()))))
        for _ in range(2):
            result = run_script(
                script,
                "--quick",
                "--threads",
                "1",
                "--output-dir",
                str(clone),
                "--defenses",
                "advmoe",
                "--attack-table-seeds",
                "--skip-ablations",
                cwd=tmp_path,
            )
            assert result.returncode != 0
            assert (
                "came out with other weights than those recorded"
                if name == "tampered"
                else "records no weight fingerprint"
            ) in result.stderr, result.stderr[-2000:]
            assert not (clone / "seed0" / "moe-upcycled" / "model.safetensors").exists()


def test_a_finished_evaluation_keeps_its_report_compressed(tmp_path, monkeypatch):
    """The cache keeps each evaluation's per-clip report gzip-compressed (``report-eps4.json.gz``), and table (a)'s run
    is read back from that form (or from the plain form older caches hold)."""
    import gzip

    import torch

    from hf_videomoe.reproduction import runner

    reproduction = runner.Reproduction(
        Settings.quick(), tmp_path / "run", seeds=[0], ablation_seeds=[], attack_table_seeds=[], skip_ablations=True
    )
    row = tmp_path / "run" / "seed0" / "tlat"
    (row / "model").mkdir(parents=True)

    class Report:
        def save(self, path):
            path.write_text('{"clean_accuracy": 0.5}')

    monkeypatch.setattr(runner, "evaluate_robustness", lambda *args, **kwargs: Report())
    reproduction.evaluate(torch.nn.Linear(1, 1), ["pgd"], 4 / 255, row / "report-eps4.json")
    assert not (row / "report-eps4.json").exists() and not (row / "model" / ".gitignore").exists()
    assert json.loads(gzip.decompress((row / "report-eps4.json.gz").read_bytes())) == {"clean_accuracy": 0.5}
    assert runner.read_json(row / "report-eps4.json.gz") == {"clean_accuracy": 0.5}
    assert runner.cached_report(row / "report-eps4.json") == row / "report-eps4.json.gz"
    (row / "report-eps4.json.gz").rename(row / "report-eps4.json")
    assert runner.cached_report(row / "report-eps4.json") == row / "report-eps4.json"


def test_compute_matched_row_needs_only_the_training_records(tmp_path, monkeypatch):
    """The compute-matched row is sized from J-TLAT's and MoE AT's training records alone, so it can train while their
    evaluations still run in another process: it must not evaluate them."""
    from hf_videomoe.reproduction import runner

    reproduction = runner.Reproduction(
        Settings.quick(), tmp_path / "run", seeds=[0], ablation_seeds=[], attack_table_seeds=[], skip_ablations=True
    )
    for name, record in (("j-tlat", {"seconds": 30.0}), ("moe-at", {"seconds_per_epoch": 4.0})):
        (tmp_path / "run" / "seed0" / name).mkdir(parents=True)
        (tmp_path / "run" / "seed0" / name / "train.json").write_text(json.dumps(record))
    trained = []

    class Stop(Exception):
        pass

    def trained_model(seed, run_name, method, start, arg_overrides, config_overrides, epochs=None):
        trained.append((run_name, epochs))
        raise Stop("trained_model was called")

    def evaluate(*args, **kwargs):
        raise AssertionError("J-TLAT or MoE AT was evaluated")

    monkeypatch.setattr(reproduction, "trained_model", trained_model)
    monkeypatch.setattr(reproduction, "evaluate", evaluate)
    with pytest.raises(Stop, match="trained_model was called"):
        reproduction.defense(0, "moe-at-matched")
    assert trained == [("moe-at-matched", 7.5)]


def test_kept_weights_load_only_with_their_recorded_fingerprint(tmp_path):
    """Weights on disk (a local run, or checked out of an older commit): a checkpoint whose tensors are not the recorded
    ones must not load."""
    import torch

    from hf_videomoe.reproduction.checkpoints import load_checkpoint, save_checkpoint
    from hf_videomoe.reproduction.recipes import build_dense

    settings = Settings.quick()
    model = build_dense(settings, ["a", "b", "c"])
    info = save_checkpoint(model, tmp_path, tmp_path / "train.json", {"epochs": 1})
    loaded = load_checkpoint(tmp_path, tmp_path / "train.json", settings, dense=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(tmp_path)  # other weights under the same record
    with pytest.raises(RuntimeError, match="other weights than those recorded in"):
        load_checkpoint(tmp_path, tmp_path / "train.json", settings, dense=True)
    assert json.loads((tmp_path / "train.json").read_text()) == info


def test_dense_timesformer_starts_able_to_see_frame_order():
    """transformers' TimeSformer starts with zero time embeddings: its output ignores frame order, which MovingShapes'
    time-reversed class pairs need. The reproduction's dense TimeSformer starts with random ones."""
    import torch
    from transformers import TimesformerForVideoClassification

    from hf_videomoe.reproduction.recipes import build_dense

    settings = Settings.quick(model_type="timesformer")
    torch.manual_seed(0)
    model = build_dense(settings, ["a", "b", "c"]).eval()
    clip = torch.rand(2, settings.num_frames, 3, settings.image_size, settings.image_size)
    reversed_clip = clip.flip(1)
    with torch.no_grad():
        assert not torch.allclose(model(pixel_values=clip).logits, model(pixel_values=reversed_clip).logits, atol=1e-4)
        plain = TimesformerForVideoClassification(model.config).eval()
        assert torch.count_nonzero(plain.timesformer.embeddings.time_embeddings) == 0
        torch.testing.assert_close(
            plain(pixel_values=clip).logits, plain(pixel_values=reversed_clip).logits, atol=1e-5, rtol=1e-5
        )


def test_defense_figure_draws_one_line_per_seed(tmp_path, monkeypatch):
    """The figure pairs each seed's rows (one line per seed across the defenses) and is skipped without rows."""
    from hf_videomoe.evaluation import plots
    from hf_videomoe.reproduction.report import defense_rows, plot_rows_per_seed

    settings = Settings.quick()
    assert plot_rows_per_seed(defense_rows({"defenses": {}}), settings, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    rows = {
        "j-tlat": {0: {"clean": 0.7, "worst_case": 0.25}, 1: {"clean": 0.85, "worst_case": 0.1}},
        "moe-at": {0: {"clean": 0.8, "worst_case": 0.3}, 1: {"clean": 0.9, "worst_case": 0.2}},
    }
    closed = []  # keep the figure open to read its lines back
    monkeypatch.setattr(plots._pyplot(), "close", closed.append)
    path = plot_rows_per_seed(defense_rows({"defenses": rows}), settings, tmp_path / "figure.png")
    assert path == tmp_path / "figure.png" and path.stat().st_size > 0
    clean, worst = closed[0].axes
    # Defenses in table (b)'s order (MoE AT before J-TLAT), one line per seed, in percent.
    assert [list(line.get_ydata()) for line in worst.get_lines()] == [pytest.approx([30, 25]), pytest.approx([20, 10])]
    assert [line.get_label() for line in clean.get_lines()] == ["seed 0", "seed 1"]
    assert [t.get_text() for t in worst.get_xticklabels()] == ["MoE AT\n(PGD-AT)", "J-TLAT"]


def test_model_step_figure_shows_the_registered_family_on_the_ablation_seeds(tmp_path, monkeypatch):
    """Issue 40's figure: J-TLAT, the model-step ablations that ran, MoE AT, on the ablation seeds only."""
    from hf_videomoe.evaluation import plots
    from hf_videomoe.reproduction.report import model_step_rows, plot_rows_per_seed

    def row(clean, worst):
        return {"clean": clean, "worst_case": worst}

    results = {
        "defenses": {
            "j-tlat": {0: row(0.8, 0.30), 1: row(0.8, 0.20), 5: row(0.8, 0.9)},  # seed 5 ran no ablation
            "moe-at": {0: row(0.8, 0.36), 1: row(0.8, 0.24)},
        },
        "ablations": {"no-aux": {0: row(0.5, 0.5)}},
    }
    assert model_step_rows(results, [0, 1]) == []  # no model-step ablation yet: no figure
    results["ablations"]["model-attack-pgd"] = {0: row(0.8, 0.33), 1: row(0.8, 0.22), 5: row(0.8, 0.9)}
    rows = model_step_rows(results, [0, 1])
    assert [label for label, _ in rows] == [
        "J-TLAT",
        "J-TLAT, step 3 on PGD",
        "J-TLAT, step 3 on TLA-M",
        "MoE AT (PGD-AT)",
    ]
    assert all(set(per_seed) <= {0, 1} for _, per_seed in rows) and rows[2][1] == {}
    closed = []
    monkeypatch.setattr(plots._pyplot(), "close", closed.append)
    plot_rows_per_seed(rows, Settings.quick(), tmp_path / "figure.png")
    _, worst = closed[0].axes
    # The TLA-M row has not run: it is left out, and each seed's line runs J-TLAT -> PGD -> MoE AT.
    assert [list(line.get_ydata()) for line in worst.get_lines()] == [
        pytest.approx([30, 33, 36]),
        pytest.approx([20, 22, 24]),
    ]
    assert len(worst.get_xticklabels()) == 3


def test_results_page_counts_the_library_versions_of_its_evaluations(tmp_path):
    """A cache filled under two transformers versions says so; timing records (``*.seconds.json``) are not counted."""
    from hf_videomoe.reproduction import software_of_results

    assert software_of_results(tmp_path) == "no evaluation recorded yet"
    for row, version in (("seed0/j-tlat", "5.24.0"), ("seed1/j-tlat", "5.25.0"), ("seed0/moe-at", "5.25.0")):
        (tmp_path / row).mkdir(parents=True)
        name = "attacks-eps4.json" if row.endswith("moe-at") else "report-eps4.json"
        (tmp_path / row / name).write_text(json.dumps({"versions": {"torch": "2.13.0", "transformers": version}}))
    (tmp_path / "seed0" / "moe-at" / "attacks-eps4.seconds.json").write_text(json.dumps({"seconds": 1.0}))
    assert software_of_results(tmp_path) == (
        "torch 2.13.0, transformers 5.24.0: 1 evaluation; torch 2.13.0, transformers 5.25.0: 2 evaluations"
    )


def test_every_ablation_has_a_generated_verdict():
    """Each ablation the reproduction can run is judged by a claim of its own in "what holds"."""
    from hf_videomoe.reproduction import ABLATIONS
    from hf_videomoe.reproduction.recipes import MODEL_STEP_ABLATIONS
    from hf_videomoe.reproduction.tables import ABLATION_CLAIMS

    # The model-step ablations have their own registered family (docs/PROTOCOL.md), the others one claim each.
    assert set(ABLATION_CLAIMS) | set(MODEL_STEP_ABLATIONS) == set(ABLATIONS)
    assert not set(ABLATION_CLAIMS) & set(MODEL_STEP_ABLATIONS)


def test_ablations_run_in_the_order_given_each_on_every_seed_before_the_next(tmp_path, capsys, load_script):
    """``--ablations`` picks and orders the ablations; each runs on every ablation seed before the next starts, so its
    verdict can be read as soon as its own seeds are in."""
    from hf_videomoe.reproduction import ABLATIONS, Reproduction

    def plan(**kwargs):
        reproduction = Reproduction(
            Settings.quick(),
            tmp_path / "run",
            seeds=[0, 1],
            ablation_seeds=[0, 1],
            attack_table_seeds=[],
            skip_ablations=False,
            defenses=["j-tlat"],
            **kwargs,
        )
        return [(seed, what) for kind, seed, what in reproduction.plan() if kind == "ablation"]

    expected = [(0, "no-model-step"), (1, "no-model-step"), (0, "no-router-step"), (1, "no-router-step")]
    assert plan(ablations=["no-model-step", "no-router-step"]) == expected
    assert plan(ablations=["no-model-step", "no-router-step", "no-model-step"]) == expected  # repeats run once
    assert [what for _, what in plan()[::2]] == list(ABLATIONS)  # default: all, in the recipes' order
    with pytest.raises(ValueError, match="unknown ablations"):
        plan(ablations=["no-such-step"])

    # The command line: names are checked, and choosing ablations while skipping them is refused, not ignored.
    script = load_script("reproduce_paper")
    assert script.parse_args(["--ablations", "no-aux", "no-guidance"]).ablations == ["no-aux", "no-guidance"]
    for argv in (["--ablations", "no-such-step"], ["--ablations", "no-aux", "--skip-ablations"]):
        with pytest.raises(SystemExit, match="^2$"):
            script.parse_args(argv)
    assert "not allowed with argument" in capsys.readouterr().err


def test_validation_mode_trains_and_evaluates_inside_the_train_split(tmp_path):
    """``--validation``: models train on the first 80 % of the train split and are evaluated on its last 20 %; the test
    clips are never read, and a cache written before the mode existed keeps its settings (no false mismatch)."""
    import torch

    from hf_videomoe.data import hold_out_validation, make_moving_shapes
    from hf_videomoe.reproduction import Reproduction

    settings = Settings.quick(eval_split="validation")
    repro = Reproduction(settings, tmp_path / "val", [0], [0], [], skip_ablations=True, defenses=["j-tlat"])
    data = make_moving_shapes(
        settings.num_videos,
        num_frames=settings.num_frames,
        image_size=settings.image_size,
        seed=settings.data_seed,
        difficulty=settings.difficulty,
    )
    train, validation = hold_out_validation(data["train"])
    assert len(repro.split("train")) == len(train) == len(data["train"]) - len(data["train"]) // 5
    assert torch.equal(repro.split("test")[0]["pixel_values"], torch.as_tensor(validation[0]["pixel_values"]))
    assert not torch.equal(repro.split("test")[0]["pixel_values"], torch.as_tensor(data["test"][0]["pixel_values"]))
    assert json.loads((tmp_path / "val" / "settings.json").read_text())["eval_split"] == "validation"
    # The protocol's mode writes settings.json without the field, as caches written before it existed have it.
    Reproduction(Settings.quick(), tmp_path / "test", [0], [0], [], skip_ablations=True, defenses=["j-tlat"])
    assert "eval_split" not in json.loads((tmp_path / "test" / "settings.json").read_text())
    with pytest.raises(SystemExit, match="eval_split"):
        Reproduction(settings, tmp_path / "test", [0], [0], [], skip_ablations=True, defenses=["j-tlat"])
    with pytest.raises(ValueError, match="eval_split must be"):
        Settings.quick(eval_split="train")
    with pytest.raises(ValueError, match="fraction in"):
        hold_out_validation(data["train"], fraction=1.5)


def test_training_length_curve_reads_one_cache_per_epoch_count(tmp_path, load_script):
    """scripts/plot_training_length.py: one point per cache (its settings' adv_epochs) and row, only when the row has a
    result on every seed named, with mean ± sd over those seeds; the figure is written."""
    import json

    script = load_script("plot_training_length")
    for epochs, worst in ((5, 0.30), (10, 0.40)):
        folder = tmp_path / f"e{epochs}"
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps({"adv_epochs": epochs}))
        for seed in (0, 1):
            for row in ("moe-at", "j-tlat"):
                if epochs == 10 and row == "j-tlat" and seed == 1:
                    continue  # an unfinished seed: this point must not appear
                path = folder / f"seed{seed}" / row / "result.json"
                path.parent.mkdir(parents=True)
                result = {"worst_case": worst + 0.02 * seed, "clean": 0.8, "train": {"cpu_seconds": 100.0 * epochs}}
                path.write_text(json.dumps(result))
    curves = script.collect([tmp_path / "e10", tmp_path / "e5"], [0, 1], None)
    assert [p["epochs"] for p in curves["MoE AT (PGD-AT)"]] == [5, 10]
    assert [p["epochs"] for p in curves["J-TLAT"]] == [5]
    assert "| MoE AT (PGD-AT) | 10 | 41.0 ± 1.4 | 80.0 ± 0.0 | 1000 |" in script.markdown_table(curves)
    assert (
        script.main(
            [str(tmp_path / "e5"), str(tmp_path / "e10"), "--seeds", "0", "1", "--output", str(tmp_path / "f.png")]
        )
        == 0
    )
    assert (tmp_path / "f.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no row has result.json"):
        script.main([str(tmp_path / "e5"), "--seeds", "7"])
