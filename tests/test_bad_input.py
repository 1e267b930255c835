"""Bad input at the public boundaries: a table per entry point, each row asserting the error type and that the message
names the argument (never a NaN, a silent cast or an error from deep inside torch)."""

import math
import re

import pytest
import torch

from hf_videomoe import TimesformerMoeConfig, VideoMAEMoeConfig
from hf_videomoe.attacks import build_attack

SHAPE = dict(
    image_size=16,
    patch_size=8,
    num_frames=4,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=8,
)


@pytest.fixture(scope="module")
def model(tiny_moe_model):
    return tiny_moe_model().eval()


def clips(batch=2):
    return torch.rand(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def with_value(index, value):
    x = clips()
    x.view(-1)[index] = value
    return x


FORWARD_CASES = [
    # (id, pixel_values, labels, error, words the message must contain)
    ("nan-pixel", with_value(5, float("nan")), None, ValueError, ["pixel_values", "NaN"]),
    ("inf-pixel", with_value(7, float("inf")), None, ValueError, ["pixel_values", "infinite"]),
    ("empty-batch", torch.rand(0, 4, 3, 16, 16), None, ValueError, ["empty batch", "pixel_values"]),
    ("0-255-pixels", clips() * 255, None, ValueError, ["pixel_values", "[0, 1]"]),
    ("float-labels", clips(), torch.tensor([0.7, 1.2]), TypeError, ["labels", "integer"]),
    ("one-hot-labels", clips(), torch.eye(8)[:2], TypeError, ["labels", "one-hot"]),
    ("labels-out-of-range", clips(), torch.tensor([0, 8]), ValueError, ["labels", "[0, 8)", "[0, 8]"]),
    ("negative-labels", clips(), torch.tensor([-1, 2]), ValueError, ["labels", "[0, 8)"]),
    ("labels-wrong-count", clips(), torch.tensor([1, 2, 3]), ValueError, ["labels", "(2,)"]),
    ("labels-not-a-tensor", clips(), [1, 2], TypeError, ["labels", "torch.Tensor"]),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_model_forward_rejects(model, case):
    _, pixel_values, labels, error, words = case
    with pytest.raises(error, match=re.escape(words[0])) as info:
        model(pixel_values, labels=labels)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


CONFIG_CASES = [
    ("nan-image-std", dict(image_std=[float("nan"), 1.0, 1.0]), ["image_std", "finite"]),
    ("inf-image-mean", dict(image_mean=[0.0, math.inf, 0.0]), ["image_mean", "finite"]),
    ("nan-aux-coef", dict(router_aux_loss_coef=float("nan")), ["router_aux_loss_coef", "finite"]),
    ("negative-z-coef", dict(router_z_loss_coef=-1.0), ["router_z_loss_coef", ">= 0"]),
    ("zero-labels", dict(num_labels=0), ["num_labels", "positive"]),
    ("unknown-gate", dict(router_gate="softmax"), ["router_gate", "straight_through"]),
    ("unknown-granularity", dict(router_granularity="video"), ["router_granularity", "model"]),
    ("image-not-a-multiple-of-patch", dict(image_size=30), ["`image_size`=30", "`patch_size`=8", "multiple of 8"]),
]


@pytest.mark.parametrize("config_cls", [VideoMAEMoeConfig, TimesformerMoeConfig])
@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_rejects(config_cls, case):
    _, overrides, words = case
    with pytest.raises(ValueError, match=re.escape(words[0])) as info:
        config_cls(**{**SHAPE, **overrides})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "apgd-ce", "square", "tlga-r", "j-tlga"])
def test_linf_budget_above_the_pixel_range_is_rejected(name):
    with pytest.raises(ValueError, match=r"`eps`=8\.0 .*L∞ budget larger than the whole pixel range"):
        build_attack(name, eps=8)
    build_attack(name, eps=1.0)  # the whole range is still a (degenerate) budget


def test_l2_budget_above_the_box_diameter_is_rejected(model):
    x = clips()  # 4 * 3 * 16 * 16 = 3072 values per clip: diameter sqrt(3072) ≈ 55.4
    with pytest.raises(ValueError, match=r"`eps`=100\.0 .*L2 budget larger than the diameter 55.4"):
        build_attack("pgd", norm="l2", eps=100, steps=1).perturb(model, x, torch.tensor([0, 1]))
    build_attack("pgd", norm="l2", eps=50, steps=1).perturb(model, x, torch.tensor([0, 1]))


def test_cli_attack_with_an_eps_in_pixel_units_exits_2(capsys):
    from hf_videomoe.cli import main

    with pytest.raises(SystemExit, match="^2$") as info:
        main(["attack", "--model", "missing-dir", "--eps", "8"])
    assert info.value.code == 2
    assert "eps" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Model cards: user text is inert, metrics must be numbers in [0, 1]


@pytest.mark.parametrize("field", ["model_name", "dataset_name"])
@pytest.mark.parametrize(
    "text",
    [
        "ok\n# Injected heading",
        "[click](javascript:alert(1))",
        "<script>x()</script>",
        "a | b\n| c |",
        "x`\n```\nimport os",
    ],
)
def test_card_escapes_user_text(field, text, tmp_path, card_report):
    import re

    from huggingface_hub import ModelCard

    from hf_videomoe.hub import build_model_card, metrics_from_model_card

    card = build_model_card(card_report(), **{"model_name": "m", field: text})
    body = card.content.split("\n---\n", 1)[1]
    fences = [line for line in body.splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0  # every code block is closed
    prose = re.sub(r"^```.*?^```", "", body, flags=re.M | re.S)  # inside code blocks text is not rendered
    assert not re.search(r"^#+ Injected", prose, re.M)  # no heading added
    assert not re.search(r"(?<!\\)\]\(javascript:", prose) and "<script>" not in prose  # no live link / HTML
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert metrics_from_model_card(loaded)["worst_case_accuracy"] == 0.5  # the YAML header still parses


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(worst_case_accuracy=float("nan")), "worst_case_accuracy"),
        (dict(worst_case_accuracy=-3.0), "worst_case_accuracy"),
        (dict(clean_accuracy=1.5), "clean_accuracy"),
        (dict(robust_accuracy={"pgd": float("inf")}), "robust_accuracy['pgd']"),
        (dict(robust_accuracy={}), "pgd"),
    ],
)
def test_card_refuses_impossible_metrics(overrides, name, card_report):
    from hf_videomoe.hub import build_model_card

    with pytest.raises(ValueError, match=re.escape(name)) as info:
        build_model_card(card_report(**overrides), model_name="m")
    assert name in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# The CLI: user errors exit 2 with one line naming the flag or file


@pytest.mark.parametrize(
    "argv, words",
    [
        (["attack", "--model", "m", "--batch-size", "0"], ["--batch-size", "positive integer"]),
        (["attack", "--model", "m", "--num-samples", "0"], ["--num-samples", "positive integer"]),
        (["attack", "--model", "m", "--steps", "-1"], ["--steps", ">= 0"]),
        (["attack", "--model", "m", "--eps", "nan"], ["--eps", "positive"]),
        (["evaluate", "--model", "m", "--eps-sweep", "4,abc"], ["--eps-sweep", "'abc'"]),
        (["evaluate", "--model", "m", "--eps-sweep", "4,300"], ["--eps-sweep", "got 4; write 4/255 or 0.0157"]),
        (["train", "--eps", "8"], ["--eps", "got 8; write 8/255 or 0.0314"]),
        (["attack", "--model", "m", "--eps", "8"], ["--eps", "got 8; write 8/255 or 0.0314"]),
        (["train", "--adv_eps", "12", "--output-dir", "o"], ["--adv_eps", "write 12/255"]),
        (["train", "--eval_attack_eps", "2/0", "--output-dir", "o"], ["--eval_attack_eps", "'2/0'"]),
    ],
)
def test_cli_rejects_bad_flags(argv, words, capsys):
    from hf_videomoe.cli import main

    with pytest.raises(SystemExit, match="^2$") as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)


def test_cli_names_corrupt_files(tmp_path, capsys, model):
    from hf_videomoe.cli import main

    model.save_pretrained(tmp_path / "model")
    model.save_pretrained(tmp_path / "good")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    (tmp_path / "report.json").write_text("{not json")
    capsys.readouterr()
    for argv, path in (
        (["attack", "--model", str(tmp_path / "model")], "model"),
        (
            [
                "push",
                "--model",
                str(tmp_path / "good"),
                "--repo-id",
                "user/x",
                "--report",
                str(tmp_path / "report.json"),
            ],
            "report.json",
        ),
    ):
        with pytest.raises(SystemExit, match="^2$") as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]  # (progress bars of the loader may come before it)
        assert last.startswith(f"hf-videomoe {argv[0]}: error:") and path in last, err


# ----------------------------------------------------------------------------------------------------------------------
# The evaluator's resumable state is checked, never trusted


def test_resume_state_is_checked(tmp_path, model):
    import json
    import warnings

    from hf_videomoe.evaluation import evaluate_robustness

    x = clips(4)
    with torch.no_grad():
        y = model(x).logits.argmax(-1)
    y[0] = (y[0] + 1) % 8  # one clean mistake
    data = [{"pixel_values": x[i], "labels": int(y[i])} for i in range(4)]
    kwargs = dict(
        attacks=["fgsm"],
        eps=2 / 255,
        batch_size=2,
        check_gradients=False,
        check_determinism=False,
        compute_cost=False,
        progress=False,
    )
    reference = evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs)
    assert reference.clean_accuracy == 0.75
    batch_file = tmp_path / "state" / "batches" / "batch_0000000.json"

    # Labels overwritten with the clean predictions: would turn the clean mistake into a hit if trusted.
    envelope = json.loads(batch_file.read_text())
    envelope["record"]["labels"] = envelope["record"]["clean_pred"]
    batch_file.write_text(json.dumps(envelope))
    with pytest.warns(UserWarning, match=r"batch_0000000\.json .*does not match its checksum"):
        tampered = evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs)
    assert tampered.clean_accuracy == 0.75 and tampered == reference

    batch_file.write_text(batch_file.read_text()[:40])  # truncated
    with pytest.warns(UserWarning, match=r"batch_0000000\.json .*truncated"):
        assert evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs) == reference
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact state: reused silently
        assert evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs) == reference

    (tmp_path / "state" / "settings.json").write_text("[]")
    with pytest.raises(ValueError, match=r"settings\.json does not hold"):
        evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs)
    (tmp_path / "state" / "settings.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"settings\.json is unreadable"):
        evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# The Hub push: bounded time and retries, the local folder kept on every failure


def test_push_times_out_retries_and_keeps_the_folder(tmp_path, model, loopback_hub, card_report):
    import socket
    import threading
    import time

    from hf_videomoe.hub import HubUploadError, push_robust_checkpoint

    # Loopback only: both servers live on 127.0.0.1 inside this test.
    report = card_report()
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(HubUploadError, match="no answer from the Hub within 1 s") as info:
            push_robust_checkpoint(
                model,
                "user/hang",
                report,
                endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}",
                token="x",
                local_dir=tmp_path / "kept",
                plots=False,
                timeout=1.0,
                max_retries=1,
            )
        assert time.monotonic() - start < 30
        assert "no answer from the Hub within 1 s" in str(info.value) and str(tmp_path / "kept") in str(info.value)
        assert (tmp_path / "kept" / "model.safetensors").is_file() and (tmp_path / "kept" / "README.md").is_file()
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        silent.close()

    server = loopback_hub
    server.fail("commit", status=500, repo_id="user/flaky", times=1)  # a transient 500 is retried, then it succeeds
    push_robust_checkpoint(
        model, "user/flaky", report, endpoint=server.url, token="x", plots=False, timeout=30.0, max_retries=1
    )
    assert "model.safetensors" in server.files("user/flaky")
    server.fail("commit", status=403, repo_id="user/denied")  # a 4xx is not retried
    with pytest.raises(HubUploadError, match="403|Forbidden"):
        push_robust_checkpoint(model, "user/denied", report, endpoint=server.url, token="x", plots=False, max_retries=3)
    with pytest.raises(ValueError, match="timeout"):
        push_robust_checkpoint(model, "user/x", report, timeout=0)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"clean_accuracy": 0.5}', ""])
def test_report_load_names_the_file(tmp_path, content):
    from hf_videomoe.evaluation import RobustnessReport

    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"report\.json is not a robustness report"):
        RobustnessReport.load(path)


@pytest.mark.parametrize(
    "rows, words",
    [
        (lambda x: [{"pixel_values": x[0], "labels": None}], ["labels", "None"]),
        (lambda x: [{"pixel_values": x[0], "labels": 0.7}], ["labels", "integer"]),
        (lambda x: [{"pixel_values": x[0] * float("nan"), "labels": 0}], ["pixel_values", "NaN"]),
        (lambda x: [{"pixel_values": x[0], "labels": 8}], ["[0, 8)"]),
        (lambda x: [], ["empty"]),
    ],
)
def test_evaluator_rejects(model, rows, words):
    from hf_videomoe.evaluation import evaluate_robustness

    with pytest.raises(ValueError, match=re.escape(words[0])) as info:
        evaluate_robustness(model, rows(clips()), attacks=["fgsm"], eps=2 / 255, progress=False, compute_cost=False)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. Foo", "1\\. Foo"),
        ("- bar", "\\- bar"),
        ("plain_name v2", "plain_name v2"),
        ("_x_", "\\_x\\_"),
        ("a\n# b", "a \\# b"),
        ("<b>&", "&lt;b&gt;&amp;"),
        ("[x](y)", "\\[x\\](y)"),
    ],
)
def test_markdown_text(text, expected):
    from hf_videomoe.hub.model_card import markdown_text

    assert markdown_text(text) == expected


def test_string_labels_are_named(model):
    from hf_videomoe.evaluation import evaluate_robustness

    with pytest.raises(ValueError, match="labels must be integer class indices, got 'walk'"):
        evaluate_robustness(
            model,
            [{"pixel_values": clips()[0], "labels": "walk"}],
            attacks=["fgsm"],
            eps=2 / 255,
            progress=False,
            compute_cost=False,
        )


# ----------------------------------------------------------------------------------------------------------------------
# No silent wrong number: shapes that drop input, NaN weights, budgets, report files, output folders, forged state


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_frames=3), r"`num_frames`=3 is not divisible by `tubelet_size`=2: .*expected a multiple of 2"),
        (dict(num_frames=4, tubelet_size=3), r"`num_frames`=4 is not divisible by `tubelet_size`=3"),
    ],
)
def test_videomae_frames_must_fill_whole_tubelets(overrides, message):
    with pytest.raises(ValueError, match=message):
        VideoMAEMoeConfig(**{**SHAPE, **overrides})


@pytest.mark.parametrize(
    "config_cls, key, value, message",
    [
        (VideoMAEMoeConfig, "num_frames", 3, r"`num_frames`=3 is not divisible by `tubelet_size`=2"),
        (VideoMAEMoeConfig, "image_size", 30, r"`image_size`=30 is not divisible by `patch_size`=8"),
        (TimesformerMoeConfig, "image_size", 30, r"`image_size`=30 is not divisible by `patch_size`=8"),
    ],
)
def test_from_pretrained_refuses_shapes_that_drop_input(config_cls, key, value, message, tmp_path):
    import json

    from transformers import AutoConfig

    config_cls(**SHAPE).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    for load in (config_cls.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=message):
            load(tmp_path)


def nan_model(model, name="classifier.weight", value=float("nan")):
    import copy

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.get_parameter(name).view(-1)[0] = value
    return broken


@pytest.mark.parametrize(
    "name, value",
    [("classifier.weight", float("nan")), ("videomae.embeddings.patch_embeddings.projection.weight", float("inf"))],
)
def test_nan_weights_stop_the_evaluation(model, name, value):
    from hf_videomoe.evaluation import evaluate_robustness

    data = [{"pixel_values": x, "labels": 0} for x in clips(2)]
    with pytest.raises(
        ValueError,
        match=r"model VideoMAEMoeForVideoClassification returned non-finite logits .*"
        rf"dataset indices \[0, 1\].*parameter '{re.escape(name)}' holds NaN / inf",
    ):
        evaluate_robustness(
            nan_model(model, name, value),
            data,
            attacks=["fgsm"],
            eps=2 / 255,
            progress=False,
            compute_cost=False,
            check_determinism=False,
            check_gradients=False,
        )


def test_cli_evaluate_of_nan_weights_exits_2_and_writes_nothing(model, tmp_path, capsys):
    from hf_videomoe.cli import main

    nan_model(model).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit, match="^2$") as info:
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "model"),
                "--attacks",
                "fgsm",
                "--num-samples",
                "4",
                "--num-videos",
                "16",
                "--num-frames",
                "4",
                "--image-size",
                "16",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert info.value.code == 2 and "non-finite logits" in err and "'classifier.weight'" in err, err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["model"]


def budget_data(model, n=8):
    x = clips(n)
    with torch.no_grad():
        y = model(x).logits.argmax(-1)
    return [{"pixel_values": x[i], "labels": int(y[i])} for i in range(n)]


BUDGET_KWARGS = dict(
    eps=8 / 255,
    steps=2,
    batch_size=4,
    progress=False,
    compute_cost=False,
    check_determinism=False,
    check_gradients=False,
)


def test_worst_case_is_taken_per_budget(model):
    from hf_videomoe.evaluation import evaluate_robustness
    from hf_videomoe.hub import build_model_card

    report = evaluate_robustness(
        model, budget_data(model), attacks={"pgd": {"eps": 0.5 / 255}, "fgsm": {}}, **BUDGET_KWARGS
    )
    assert report.eps == 8 / 255 and report.worst_case_attacks == ["fgsm"]
    assert report.worst_case_accuracy == report.robust_accuracy["fgsm"]  # PGD at 0.5/255 does not count at 8/255
    assert {k: (e["attacks"], e["eps"]) for k, e in report.worst_case_by_budget.items()} == {
        f"linf:{8 / 255!r}": (["fgsm"], 8 / 255),
        f"linf:{0.5 / 255!r}": (["pgd"], 0.5 / 255),
    }
    results = {r.metric_config: r for r in build_model_card(report, model_name="m").data.eval_results}
    assert (
        results["worst-case"].metric_args["attacks"] == ["fgsm"] and results["worst-case"].metric_args["eps"] == 8 / 255
    )
    low = results[f"worst-case@linf:{0.5 / 255!r}"]
    assert low.metric_args["attacks"] == ["pgd"] and low.metric_value == report.robust_accuracy["pgd"]
    assert "1/510" in low.metric_name and "Worst case (L∞ ε=1/510: pgd)" in report.to_markdown()


def test_attacks_are_compared_for_masking_only_at_one_budget(model):
    from hf_videomoe.evaluation import evaluate_robustness

    attacks = {"square": {"steps": 30}, "fgsm": {"eps": 0.5 / 255}}  # a weak budget for FGSM is no gradient masking
    report = evaluate_robustness(model, budget_data(model), attacks=attacks, **BUDGET_KWARGS)
    assert report.robust_accuracy["fgsm"] > report.robust_accuracy["square"] + 0.1
    assert "gradient_masking" not in report.flag_names and report.checks["gradient_masking"].startswith("skipped")


def test_an_attack_instance_sets_the_reported_budget(model):
    from hf_videomoe.evaluation import evaluate_robustness
    from hf_videomoe.hub import build_model_card

    with pytest.warns(UserWarning, match=r"eps=0\.0313\d* \(linf\) is used by no attack"):
        report = evaluate_robustness(
            model, budget_data(model), attacks=[build_attack("pgd", eps=0.5 / 255, steps=2)], **BUDGET_KWARGS
        )
    assert report.eps == 0.5 / 255 and "L∞ ε = 1/510" in report.headline()
    worst = next(
        r for r in build_model_card(report, model_name="m").data.eval_results if r.metric_config == "worst-case"
    )
    assert worst.metric_args["eps"] == 0.5 / 255 and "8/255" not in worst.metric_name
    with pytest.raises(ValueError, match=r"attacks must share one budget in mode='cascade'.*use mode='full'"):
        evaluate_robustness(
            model, budget_data(model), attacks={"pgd": {"eps": 0.5 / 255}, "fgsm": {}}, mode="cascade", **BUDGET_KWARGS
        )


REPORT_CASES = [
    # (id, changes to a valid report's dict, error type, message)
    (
        "string-robust",
        {"robust_accuracy": {"pgd": "oops"}},
        TypeError,
        r"robust_accuracy\['pgd'\] must be a number in \[0, 1\], got 'oops'",
    ),
    ("string-clean", {"clean_accuracy": "0.9"}, TypeError, r"clean_accuracy must be a number in \[0, 1\], got '0\.9'"),
    (
        "percent-robust",
        {"robust_accuracy": {"pgd": 7.5}},
        ValueError,
        r"robust_accuracy\['pgd'\] must be a finite accuracy in \[0, 1\], got 7\.5",
    ),
    (
        "robust-above-clean",
        {"clean_accuracy": 0.4},
        ValueError,
        r"robust_accuracy\['pgd'\] is 0\.5, above clean_accuracy=0\.4; expected robust <= clean",
    ),
    (
        "worst-above-robust",
        {"worst_case_accuracy": 0.6},
        ValueError,
        r"worst_case_accuracy .*0\.6, above robust_accuracy\['pgd'\]=0\.5; expected a worst case <= each of its attacks",
    ),
    (
        "worst-under-a-budget-not-run",
        {"attack_settings": {"pgd": {"name": "pgd", "norm": "linf", "eps": 0.5 / 255}}},
        ValueError,
        r"counts attack 'pgd', which ran at L∞ ε=1/510, in a worst case at L∞ ε=4/255",
    ),
    ("zero-samples", {"num_samples": 0}, ValueError, r"num_samples must be a positive integer, got 0"),
    ("unknown-norm", {"norm": "l1"}, ValueError, r"norm must be one of \('linf', 'l2'\), got 'l1'"),
    (
        "extra-attack",
        {"robust_accuracy": {"pgd": 0.5, "fgsm": 0.5}},
        ValueError,
        r"robust_accuracy has \['fgsm'\], which are not in attacks \['pgd'\]",
    ),
]


@pytest.mark.parametrize("case", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_is_validated_on_construction_load_and_card(case, tmp_path, card_report):
    import json

    from hf_videomoe.evaluation import RobustnessReport
    from hf_videomoe.hub import build_model_card

    _, changes, error, message = case
    data = {**card_report().to_dict(), **changes}
    with pytest.raises(error, match=message):
        RobustnessReport(**{k: v for k, v in data.items() if k != "format_version"})
    (tmp_path / "report.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"report\.json is not a robustness report .*" + message):
        RobustnessReport.load(tmp_path / "report.json")
    edited = card_report()  # a report edited after construction never reaches a card
    for key, value in changes.items():
        setattr(edited, key, value)
    with pytest.raises(error, match=message):
        build_model_card(edited, model_name="m")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format_version": 999}, r"format_version 999 is newer than this hf_videomoe reads \(up to 3\)"),
        ({"format_version": "2"}, r"format_version must be a positive integer, got '2'"),
        ({"flags": [{"message": "no name"}]}, r"a reliability flag must be an object with string 'name' and 'message'"),
        ({"flags": {"name": "x"}}, r"flags must be a list and eps_sweep a dict"),
    ],
)
def test_report_file_versions_and_flags_are_checked(changes, message, tmp_path, card_report):
    import json

    from hf_videomoe.evaluation import RobustnessReport

    (tmp_path / "report.json").write_text(json.dumps({**card_report().to_dict(), **changes}))
    with pytest.raises(ValueError, match=r"report\.json is not a robustness report .*" + message):
        RobustnessReport.load(tmp_path / "report.json")


def test_older_report_versions_are_migrated(tmp_path, card_report):
    import json

    from hf_videomoe.evaluation import RobustnessReport

    old = {
        k: v for k, v in card_report().to_dict().items() if k not in ("format_version", "mode", "worst_case_by_budget")
    }
    (tmp_path / "report.json").write_text(json.dumps(old))  # version 1: no format_version, no mode
    loaded = RobustnessReport.load(tmp_path / "report.json")
    assert loaded == card_report() and loaded.mode == "full" and loaded.worst_case_attacks == ["pgd"]


def test_two_runs_into_one_output_folder(model, tmp_path, capsys):
    import json
    import os

    from hf_videomoe.cli import main
    from hf_videomoe.evaluation import RobustnessReport
    from hf_videomoe.evaluation.output_folder import OutputFolderBusyError, staged_output_folder
    from hf_videomoe.hub import metrics_from_model_card, report_metrics

    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    argv = [
        "evaluate",
        "--model",
        str(tmp_path / "model"),
        "--attacks",
        "fgsm",
        "--num-samples",
        "4",
        "--num-videos",
        "16",
        "--num-frames",
        "4",
        "--image-size",
        "16",
        "--output-dir",
        str(out),
    ]
    with staged_output_folder(out, what="the first run") as staging:  # the first run is still writing
        (staging / "report.json").write_text("first")
        with pytest.raises(SystemExit, match="^2$") as info:
            main(argv)
        with pytest.raises(
            OutputFolderBusyError,
            match=rf"output folder {re.escape(str(out))} is being written by "
            rf"the first run \(pid {os.getpid()} on ",
        ):
            with staged_output_folder(out):
                pass
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and "is being written by the first run" in err and str(out) in err, err
    assert (out / "report.json").read_text() == "first"  # the first run's result, complete, untouched by the second

    (out / "README.md").write_text("stale card of an earlier run")
    (out / "notes.txt").write_text("not ours")
    (out / "eps_sweep.png").write_text("plot of an earlier run with an ε sweep")
    assert main(argv) == 0  # now the folder is free: one complete, consistent result replaces the first
    report = RobustnessReport.load(out / "report.json")
    assert metrics_from_model_card(out / "README.md") == report_metrics(report)
    assert not (out / "eps_sweep.png").exists()  # no sweep this time: no stale plot beside the new card
    assert (out / "notes.txt").read_text() == "not ours" and not list(tmp_path.glob(".out.*"))

    with pytest.raises(RuntimeError, match="crash"):  # a failed run leaves the folder as it was
        with staged_output_folder(out, owned_names=["report.json"]) as staging:
            (staging / "report.json").write_text("{}")
            raise RuntimeError("crash")
    assert RobustnessReport.load(out / "report.json") == report and not list(tmp_path.glob(".out.*"))
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match=r"Removing the stale lock .*\.out\.lock of a run that no longer exists"):
        with staged_output_folder(out):
            pass


def forge(batch_file, edit):
    """Edit a batch file's record and recompute its checksum, as a forger would."""
    import json

    from hf_videomoe.evaluation.state import sha256_of

    envelope = json.loads(batch_file.read_text())
    edit(envelope["record"])
    envelope["record_sha256"] = sha256_of(envelope["record"])
    batch_file.write_text(json.dumps(envelope))


@pytest.mark.parametrize("source", ["list", "generator"])
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(labels=r["clean_pred"]), r"its labels \[.*\] differ from the dataset's"),
        (lambda r: r.update(indices=[i + 100 for i in r["indices"]]), r"its indices \[10[01].*\] are not the batch's"),
        (lambda r: r["attacks"]["fgsm"].update(pred=[0]), r"its attack 'fgsm' does not hold one prediction per sample"),
    ],
)
def test_forged_state_with_a_recomputed_checksum_is_caught(model, tmp_path, source, edit, message):
    from hf_videomoe.evaluation import evaluate_robustness

    rows = budget_data(model, 4)
    rows[0]["labels"] = (rows[0]["labels"] + 1) % 8  # one clean mistake: forged labels would hide it
    data = (lambda: rows) if source == "list" else (lambda: (row for row in rows))
    kwargs = dict(
        attacks=["fgsm"],
        eps=2 / 255,
        batch_size=2,
        check_gradients=False,
        check_determinism=False,
        compute_cost=False,
        progress=False,
        state_dir=tmp_path / "state",
    )
    reference = evaluate_robustness(model, data(), **kwargs)
    assert reference.clean_accuracy == 0.75
    forge(tmp_path / "state" / "batches" / "batch_0000000.json", edit)
    with pytest.warns(UserWarning, match=r"batch_0000000\.json is not trusted and will be recomputed: " + message):
        assert evaluate_robustness(model, data(), **kwargs) == reference
