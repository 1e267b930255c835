"""The `hf-videomoe` command line on tiny settings, the reduced demo, and the README's code blocks."""

import json
import re
from pathlib import Path

import pytest

from hf_videomoe.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
TINY_DATA = ["--num-videos", "32", "--num-frames", "4", "--image-size", "16", "--difficulty", "easy"]
TINY_MODEL = ["--patch-size", "8", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2"]


@pytest.mark.parametrize("command", ["demo", "train", "attack", "evaluate", "push", "bench"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit, match="^0$") as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hf-videomoe " + command in capsys.readouterr().out


def test_attack_list_names_every_attack(capsys):
    from hf_videomoe.attacks import ATTACKS

    main(["attack", "--list"])
    out = capsys.readouterr().out
    assert all(name in out for name in ATTACKS)


def test_errors_are_actionable(tmp_path, capsys):
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        main(["attack", "--model", str(tmp_path / "missing"), *TINY_DATA])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="^2$"):
        main(["attack", "--model", str(tmp_path), "--attack", "pgdd", *TINY_DATA])  # no config.json, then bad name
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        main(["push", "--model", str(tmp_path), "--repo-id", "user/x"])
    assert exit_info.value.code == 2


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    output = tmp_path_factory.mktemp("cli") / "model"
    main(
        [
            "train",
            *TINY_DATA,
            *TINY_MODEL,
            "--adv-method",
            "pgd-at",
            "--adv-steps",
            "1",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--eval-attacks",
            "",
            "--use-cpu",
            "--output-dir",
            str(output),
        ]
    )
    return output


def test_train_attack_evaluate(trained_model, tmp_path, capsys):
    assert (trained_model / "config.json").is_file() and (trained_model / "model.safetensors").is_file()
    result_path = tmp_path / "attack.json"
    main(
        [
            "attack",
            "--model",
            str(trained_model),
            "--attack",
            "tlga-r",
            "--steps",
            "2",
            "--num-samples",
            "8",
            "--output",
            str(result_path),
            *TINY_DATA,
        ]
    )
    result = json.loads(result_path.read_text())
    assert result["num_samples"] == 8 and 0 <= result["robust_accuracy"] <= 1 and "routing_change" in result

    report_dir = tmp_path / "report"
    main(
        [
            "evaluate",
            "--model",
            str(trained_model),
            "--attacks",
            "pgd,j-tlga",
            "--steps",
            "2",
            "--num-samples",
            "8",
            "--output-dir",
            str(report_dir),
            *TINY_DATA,
        ]
    )
    report = json.loads((report_dir / "report.json").read_text())
    assert report["worst_case_accuracy"] <= min(report["robust_accuracy"].values()) <= report["clean_accuracy"]
    assert (report_dir / "README.md").is_file()
    assert "worst" in capsys.readouterr().out.lower()

    cascade_dir = tmp_path / "cascade"
    main(
        [
            "evaluate",
            "--model",
            str(trained_model),
            "--attacks",
            "pgd,j-tlga",
            "--steps",
            "2",
            "--num-samples",
            "8",
            "--mode",
            "cascade",
            "--exact-attacks",
            "pgd",
            "--output-dir",
            str(cascade_dir),
            *TINY_DATA,
        ]
    )
    cascade = json.loads((cascade_dir / "report.json").read_text())
    assert cascade["mode"] == "cascade" and cascade["worst_case_accuracy"] == report["worst_case_accuracy"]
    assert cascade["exact_attacks"] == ["pgd"] and cascade["robust_accuracy"]["pgd"] == report["robust_accuracy"]["pgd"]


def test_push_to_loopback_hub(trained_model, push_to_loopback_hub):
    main(
        [
            "evaluate",
            "--model",
            str(trained_model),
            "--attacks",
            "pgd",
            "--steps",
            "1",
            "--num-samples",
            "8",
            *TINY_DATA,
        ]
    )
    files = push_to_loopback_hub(trained_model, "user/cli-moe")
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)


def test_demo_reduced_mode(tmp_path):
    from hf_videomoe.demo import run_demo

    summary = run_demo(output_dir=tmp_path, quick=True)
    assert set(summary) == {"MoE (no AT)", "MoE + PGD-AT", "MoE + J-TLAT"}
    for row in summary.values():
        assert row["worst_case"] <= min(row["pgd"], row["tlga-r"], row["j-tlga"]) <= row["clean"]
    assert (tmp_path / "summary.json").is_file()
    assert all((tmp_path / folder / "README.md").is_file() for folder in ("moe", "pgd-at", "j-tlat"))


def test_demo_mixture_uses_its_balance_weight(tmp_path):
    """The demo's balance weight reaches the mixture and, through its config, both defended models."""
    from dataclasses import replace

    from hf_videomoe.demo import DemoSettings, run_demo
    from hf_videomoe.models.videomae_moe import VideoMAEMoeConfig

    settings = replace(DemoSettings.quick(), num_videos=48, eval_samples=8, router_aux_loss_coef=0.123)
    run_demo(output_dir=tmp_path, settings=settings)
    for name in ("moe", "pgd-at", "j-tlat"):
        assert VideoMAEMoeConfig.from_pretrained(tmp_path / name).router_aux_loss_coef == 0.123, name


def _readme_python_blocks():
    text = (ROOT / "README.md").read_text()
    return [body for info, body in re.findall(r"```(python[^\n]*)\n(.*?)```", text, re.S) if "no-run" not in info]


def test_readme_code_blocks_run(tmp_path, monkeypatch):
    blocks = _readme_python_blocks()
    assert blocks, "README has no runnable python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_parser_defaults_match_paper_budget():
    args = build_parser().parse_args(["attack", "--model", "m"])
    assert args.eps == pytest.approx(8 / 255) and args.norm == "linf"


def test_train_upcycles_with_clustered_routers(tmp_path, monkeypatch, tiny_dense_model):
    import torch

    import hf_videomoe.moe as moe_module

    dense_dir = tmp_path / "dense"
    tiny_dense_model().save_pretrained(dense_dir)
    calls = []
    original = moe_module.cluster_routers
    monkeypatch.setattr(
        moe_module, "cluster_routers", lambda model, x, **kw: calls.append(x.shape) or original(model, x, **kw)
    )
    main(
        [
            "train",
            *TINY_DATA,
            "--dense-checkpoint",
            str(dense_dir),
            "--granularity",
            "model",
            "--cluster-router-clips",
            "12",
            "--max-steps",
            "1",
            "--batch-size",
            "8",
            "--eval-attacks",
            "",
            "--use-cpu",
            "--output-dir",
            str(tmp_path / "moe"),
        ]
    )
    assert calls == [torch.Size([12, 4, 3, 16, 16])]
    assert (tmp_path / "moe" / "model.safetensors").is_file()
