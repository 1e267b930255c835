"""`hf-videomoe train` on HfArgumentParser, ε written one way in every flag, `--version`, dense checkpoints with a
normalising processor, and model cards whose code blocks run as written (issue 35)."""

import json
import re

import pytest
import torch

from hf_videomoe.cli import build_parser, main
from hf_videomoe.commands.train import parse_train_args

TINY_DATA = ["--num-videos", "32", "--num-frames", "4", "--image-size", "16", "--difficulty", "easy"]
TINY_MODEL = ["--patch-size", "8", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------------------------------------------------
# train: HfArgumentParser


def test_train_defaults_are_the_commands():
    data, model, run, args = parse_train_args(["--output-dir", "out"])
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (5, 16, 16)
    assert (args.learning_rate, args.warmup_steps, args.weight_decay, args.seed) == (1e-3, 20, 0.05, 0)
    assert (args.save_strategy, args.save_total_limit, args.logging_steps) == ("epoch", 2, 10)
    assert args.eval_strategy == "epoch" and args.eval_attacks == ["pgd"]  # eval each epoch: attacks were given
    assert args.report_to == [] and args.remove_unused_columns is False
    assert (args.adv_method, args.adv_steps, args.adv_eps) == ("none", 3, pytest.approx(8 / 255))
    assert (data.dataset, data.num_videos, model.model_type, run.reproducible) == (
        "moving-shapes",
        800,
        "videomae_moe",
        False,
    )
    assert parse_train_args(["--output-dir", "out", "--eval-attacks", ""])[3].eval_strategy == "no"


@pytest.mark.parametrize("style", ["_", "-"])
def test_train_takes_every_trainer_flag_in_both_spellings(style):
    def flag(name):
        return "--" + name.replace("_", style)

    argv = [
        flag("output_dir"),
        "out",
        flag("gradient_checkpointing"),
        flag("report_to"),
        "tensorboard",
        flag("eval_strategy"),
        "steps",
        flag("eval_steps"),
        "7",
        flag("num_train_epochs"),
        "2",
        flag("per_device_train_batch_size"),
        "4",
        flag("lr_scheduler_type"),
        "cosine",
        flag("adv_eps"),
        "4/255",
        flag("eval_attack_eps"),
        "0.0157",
        flag("num_experts"),
        "2",
        flag("num_videos"),
        "40",
    ]
    data, model, run, args = parse_train_args(argv)
    assert args.gradient_checkpointing and args.report_to == ["tensorboard"] and args.eval_strategy == "steps"
    assert (args.eval_steps, args.num_train_epochs, args.per_device_train_batch_size) == (7, 2, 4)
    assert args.lr_scheduler_type == "cosine" and args.adv_eps == 4 / 255
    assert args.eval_attack_eps == pytest.approx(4 / 255, rel=1e-3)
    assert model.num_experts == 2 and data.num_videos == 40


def test_train_keeps_its_short_flags():
    data, model, run, args = parse_train_args(
        [
            "--eps",
            "4/255",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--learning-rate",
            "5e-4",
            "--output-dir",
            "o",
            "--seed",
            "3",
            "--use-cpu",
            "--resume",
            "true",
            "--eval-attacks",
            "pgd,j-tlga",
            "--adv-method",
            "pgd-at",
            "--max-steps",
            "9",
            "--warmup-steps",
            "2",
            "--data-seed",
            "5",
            "--model-type",
            "videomae",
            "--reproducible",
        ]
    )
    assert args.adv_eps == 4 / 255 and args.num_train_epochs == 3 and args.learning_rate == 5e-4
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 8
    assert (args.output_dir, args.seed, args.use_cpu, args.resume_from_checkpoint) == ("o", 3, True, "true")
    assert args.eval_attacks == ["pgd", "j-tlga"] and args.adv_method == "pgd-at"
    assert (args.max_steps, args.warmup_steps, args.data_seed) == (9, 2, 5)
    assert model.model_type == "videomae" and run.reproducible


def test_train_help_is_hfargumentparsers(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-videomoe train")
    for option in (
        "--per_device_train_batch_size",
        "--bf16",
        "--gradient_checkpointing",
        "--report_to",
        "--eval_strategy",
        "--adv_eps",
        "--num-videos",
        "--reproducible",
        "--eps ADV_EPS",
    ):
        assert option in out, option


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--output-dir", "o", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["train", "--eps", "4/255"], ["--output_dir"]),
        (["train", "--output-dir", "o", "--num-videos", "0"], ["--num-videos", "positive integer"]),
        (["train", "--output-dir", "o", "--eval-attacks", "pgdd"], ["eval_attacks", "pgdd"]),
    ],
)
def test_train_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit, match="^2$"):
        main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hf-videomoe train"), err
    for word in words:
        assert word in err, (word, err)


# ----------------------------------------------------------------------------------------------------------------------
# ε in every flag, --version


def test_eps_sweep_notations_mean_the_same():
    parser = build_parser()
    fractions = parser.parse_args(["evaluate", "--model", "m", "--eps-sweep", "4/255,8/255"]).eps_sweep
    floats = parser.parse_args(["evaluate", "--model", "m", "--eps-sweep", "0.0157,0.031"]).eps_sweep
    assert fractions == [4 / 255, 8 / 255] and floats == pytest.approx(fractions, rel=2e-2)
    assert parser.parse_args(["attack", "--model", "m", "--eps", "8/255"]).eps == 8 / 255


def test_l2_budget_may_exceed_one(tmp_path, capsys):
    with pytest.raises(SystemExit, match="^2$"):
        main(["attack", "--model", str(tmp_path / "missing"), "--norm", "l2", "--eps", "2"])
    err = capsys.readouterr().err
    assert "does not exist" in err and "--eps" not in err


def test_version(capsys):
    import hf_videomoe

    with pytest.raises(SystemExit, match="^0$"):
        main(["--version"])
    assert hf_videomoe.__version__ in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------------
# Dense checkpoints: the processor's normalisation, MoE-only attacks dropped


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory, tiny_dense_model):
    from transformers import VideoMAEImageProcessor

    path = tmp_path_factory.mktemp("dense") / "videomae"
    tiny_dense_model().save_pretrained(path)
    VideoMAEImageProcessor(
        size={"shortest_edge": 16},
        crop_size={"height": 16, "width": 16},
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(path)
    return path


def _python_clean_accuracy(path, num_samples=16):
    from transformers import AutoModelForVideoClassification

    from hf_videomoe.data import make_moving_shapes

    model = AutoModelForVideoClassification.from_pretrained(path).eval()
    test = make_moving_shapes(32, num_frames=4, image_size=16, seed=0, difficulty="easy")["test"].with_format("torch")
    test = test.select(range(min(num_samples, len(test))))
    pixels, labels = test[:]["pixel_values"], test[:]["labels"]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        normalised = model(pixel_values=(pixels - mean) / std).logits.argmax(-1)
        raw = model(pixel_values=pixels).logits.argmax(-1)
    return (normalised == labels).float().mean().item(), normalised, raw, pixels


def test_dense_checkpoint_is_normalised_as_its_processor_does(dense_checkpoint, tmp_path, capsys, monkeypatch):
    import hf_videomoe.evaluation as evaluation
    from hf_videomoe.attacks import NormalizedModel

    expected, normalised, raw, pixels = _python_clean_accuracy(dense_checkpoint)
    assert not torch.equal(normalised, raw)  # the normalisation changes what the model predicts
    seen = []
    original = evaluation.evaluate_robustness
    monkeypatch.setattr(
        evaluation, "evaluate_robustness", lambda model, *a, **kw: seen.append(model) or original(model, *a, **kw)
    )
    report_dir = tmp_path / "report"
    main(
        [
            "evaluate",
            "--model",
            str(dense_checkpoint),
            "--attacks",
            "pgd,tlga-r,j-tlga",
            "--steps",
            "1",
            "--num-samples",
            "16",
            "--output-dir",
            str(report_dir),
            *TINY_DATA,
        ]
    )
    out = capsys.readouterr().out
    dropped = [line for line in out.splitlines() if line.startswith("Dropped MoE-only attacks")]
    assert len(dropped) == 1 and "tlga-r, j-tlga" in dropped[0], out
    report = json.loads((report_dir / "report.json").read_text())
    assert report["attacks"] == ["pgd"] and report["clean_accuracy"] == pytest.approx(expected)
    assert isinstance(seen[0], NormalizedModel)
    with torch.no_grad():
        assert torch.equal(seen[0](pixels).logits.argmax(-1), normalised)

    result_path = tmp_path / "attack.json"
    main(
        [
            "attack",
            "--model",
            str(dense_checkpoint),
            "--attack",
            "pgd",
            "--steps",
            "1",
            "--num-samples",
            "16",
            "--output",
            str(result_path),
            *TINY_DATA,
        ]
    )
    assert json.loads(result_path.read_text())["clean_accuracy"] == pytest.approx(expected)
    with pytest.raises(SystemExit, match="^2$"):
        main(["attack", "--model", str(dense_checkpoint), "--attack", "tlga-r", *TINY_DATA])
    assert "no MoE layer" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Model cards: next to the checkpoint, recipe recorded, every python block runs as written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output = tmp_path_factory.mktemp("train") / "model"
    main(
        [
            "train",
            *TINY_DATA,
            *TINY_MODEL,
            "--adv-method",
            "pgd-at",
            "--adv_steps",
            "1",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--eval-attacks",
            "",
            "--use_cpu",
            "--report_to",
            "none",
            "--eps",
            "4/255",
            "--output_dir",
            str(output),
        ]
    )
    return output


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_train_records_its_recipe_and_card_blocks_run(trained, tmp_path, run_script):
    record = json.loads((trained / "training_recipe.json").read_text())
    assert record["training_recipe"]["adv_method"] == "pgd-at" and record["training_recipe"]["adv_eps"] == 4 / 255
    assert "base_model" not in record and record["weights_sha256"]

    main(
        [
            "evaluate",
            "--model",
            str(trained),
            "--attacks",
            "pgd",
            "--steps",
            "1",
            "--num-samples",
            "8",
            "--eps-sweep",
            "2/255,4/255",
            *TINY_DATA,
        ]
    )
    card = (trained / "robustness" / "README.md").read_text()
    assert "pip install hf_videomoe" in card and "Not recorded" not in card and "| adv_method | pgd-at |" in card
    assert "--eps-sweep 2/255,4/255" in card
    blocks = _python_blocks(card)
    assert len(blocks) >= 2 and all("import hf_videomoe" in block for block in blocks)
    report = json.loads((trained / "robustness" / "report.json").read_text())
    for block in blocks:
        proc = run_script("-c", block, cwd=tmp_path)
        assert proc.returncode == 0, (block, proc.stderr[-3000:])
        if "evaluate_robustness" in block:  # the same numbers, re-computed
            assert f"{100 * report['worst_case_accuracy']:.1f} %" in proc.stdout, proc.stdout[-2000:]


def test_push_finds_the_demos_report_and_recipe(trained, tmp_path, push_to_loopback_hub):
    from hf_videomoe.demo import DemoSettings, write_model_card
    from hf_videomoe.evaluation import evaluate_robustness
    from hf_videomoe.models.videomae_moe import VideoMAEMoeForVideoClassification

    checkpoint = tmp_path / "j-tlat"
    model = VideoMAEMoeForVideoClassification.from_pretrained(trained).eval()
    model.save_pretrained(checkpoint)
    settings = DemoSettings(num_videos=32, num_frames=4, image_size=16)
    from hf_videomoe.data import make_moving_shapes

    test = make_moving_shapes(32, num_frames=4, image_size=16, seed=0, difficulty="easy")["test"].select(range(8))
    report = evaluate_robustness(model, test, attacks=["pgd"], eps=4 / 255, steps=1, batch_size=8, progress=False)
    readme = write_model_card(report, checkpoint, settings, "MoE + J-TLAT", 0, weights_sha256="x")
    assert readme == checkpoint / "README.md" and (checkpoint / "robustness" / "report.json").is_file()

    card = push_to_loopback_hub(checkpoint, "user/demo-jtlat")["README.md"].decode()
    assert "Not recorded" not in card and "| method | MoE + J-TLAT |" in card
    assert "make_moving_shapes(num_videos=32, num_frames=4, image_size=16, seed=0, difficulty='easy')" in card
    assert "from_pretrained('user/demo-jtlat')" in card and "base_model" not in card.split("---")[1]


def test_base_model_only_when_a_hub_id(tmp_path, card_report):
    from hf_videomoe.hub import build_model_card
    from hf_videomoe.hub.checkpoint_files import is_hub_id

    assert is_hub_id("MCG-NJU/videomae-base") and not is_hub_id(str(tmp_path)) and not is_hub_id("out/a/dense")
    report = card_report()
    local = build_model_card(report, model_name="m", base_model=str(tmp_path)).data.to_dict()
    hub = build_model_card(report, model_name="m", base_model="MCG-NJU/videomae-base").data.to_dict()
    assert "base_model" not in local or local["base_model"] is None
    assert hub["base_model"] == "MCG-NJU/videomae-base"


def test_demo_cards_sit_next_to_their_checkpoints_and_run(tmp_path, run_script):
    from dataclasses import replace

    from hf_videomoe.demo import DemoSettings, run_demo

    settings = replace(DemoSettings.quick(), num_videos=48, eval_samples=8)
    run_demo(output_dir=tmp_path / "demo", settings=settings, reproducible=False)
    for folder in ("moe", "pgd-at", "j-tlat"):
        checkpoint = tmp_path / "demo" / folder
        assert (checkpoint / "README.md").is_file() and (checkpoint / "robustness" / "report.json").is_file()
        assert json.loads((checkpoint / "training_recipe.json").read_text())["training_recipe"]["method"]
    checkpoint = tmp_path / "demo" / "j-tlat"
    card = (checkpoint / "README.md").read_text()
    assert "difficulty='easy'" in card and "num_videos=48" in card and "Not recorded" not in card
    report = json.loads((checkpoint / "robustness" / "report.json").read_text())
    for block in _python_blocks(card):
        proc = run_script("-c", block, cwd=tmp_path)
        assert proc.returncode == 0, (block, proc.stderr[-3000:])
        if "evaluate_robustness" in block:
            assert f"{100 * report['worst_case_accuracy']:.1f} %" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.0314", 0.0314), ("1", 1.0), (" 4/255 ", 4 / 255)])
def test_parse_eps_accepts_fractions_and_floats(text, value):
    from hf_videomoe.commands.common import parse_eps

    assert parse_eps(text) == value


@pytest.mark.parametrize(
    "text, words",
    [
        ("8", "got 8; write 8/255 or 0.0314"),
        ("0", "positive"),
        ("-1/255", "positive"),
        ("1/0", "'1/0'"),
        ("abc", "8/255 or 0.0314"),
        ("nan", "positive"),
    ],
)
def test_parse_eps_refuses_ambiguous_values(text, words):
    import argparse

    from hf_videomoe.commands.common import parse_eps

    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
        parse_eps(text)


def test_pixel_space_model_follows_the_processor(dense_checkpoint, tmp_path):
    from transformers import AutoModelForVideoClassification

    from hf_videomoe.attacks import NormalizedModel, pixel_space_model, processor_normalization, split_attacks_for_model

    assert processor_normalization(dense_checkpoint) == (IMAGENET_MEAN, IMAGENET_STD)
    dense = AutoModelForVideoClassification.from_pretrained(dense_checkpoint)
    wrapped = pixel_space_model(dense, dense_checkpoint)
    assert isinstance(wrapped, NormalizedModel) and pixel_space_model(wrapped, dense_checkpoint) is wrapped
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": False, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    assert processor_normalization(tmp_path) is None and pixel_space_model(dense, tmp_path) is dense
    assert pixel_space_model(dense, tmp_path / "no-processor") is dense
    assert split_attacks_for_model(["pgd", "tlga-r", "square", "j_tlga"], dense) == (
        ["pgd", "square"],
        ["tlga-r", "j_tlga"],
    )
    with pytest.raises(ValueError, match="Unknown attack 'pgdd'"):
        split_attacks_for_model(["pgdd"], dense)
