"""Bad input at the public boundaries: a table per entry point, each row asserting the error type and that the message
names the argument (never a NaN, a silent cast or an error from deep inside torch)."""

import math

import pytest
import torch

from hf_videomoe import TimesformerMoeConfig, VideoMAEMoeConfig, VideoMAEMoeForVideoClassification
from hf_videomoe.attacks import build_attack

SHAPE = dict(image_size=16, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, num_labels=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoMAEMoeForVideoClassification(VideoMAEMoeConfig(**SHAPE)).eval()


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
    with pytest.raises(error) as info:
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
]


@pytest.mark.parametrize("config_cls", [VideoMAEMoeConfig, TimesformerMoeConfig])
@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_rejects(config_cls, case):
    _, overrides, words = case
    with pytest.raises(ValueError) as info:
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

    with pytest.raises(SystemExit) as info:
        main(["attack", "--model", "missing-dir", "--eps", "8"])
    assert info.value.code == 2
    assert "eps" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Model cards: user text is inert, metrics must be numbers in [0, 1]


def card_report(**overrides):
    from hf_videomoe.evaluation import RobustnessReport

    kwargs = dict(clean_accuracy=0.9, robust_accuracy={"pgd": 0.5}, worst_case_accuracy=0.5, num_samples=8,
                  eps=4 / 255, attacks=["pgd"])
    return RobustnessReport(**{**kwargs, **overrides})


@pytest.mark.parametrize("field", ["model_name", "dataset_name"])
@pytest.mark.parametrize("text", ["ok\n# Injected heading", "[click](javascript:alert(1))", "<script>x()</script>",
                                  "a | b\n| c |", "x`\n```\nimport os"])
def test_card_escapes_user_text(field, text, tmp_path):
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


@pytest.mark.parametrize("overrides, name", [
    (dict(worst_case_accuracy=float("nan")), "worst_case_accuracy"),
    (dict(worst_case_accuracy=-3.0), "worst_case_accuracy"),
    (dict(clean_accuracy=1.5), "clean_accuracy"),
    (dict(robust_accuracy={"pgd": float("inf")}), "robust_accuracy['pgd']"),
    (dict(robust_accuracy={}), "pgd"),
])
def test_card_refuses_impossible_metrics(overrides, name):
    from hf_videomoe.hub import build_model_card

    with pytest.raises(ValueError) as info:
        build_model_card(card_report(**overrides), model_name="m")
    assert name in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# The CLI: user errors exit 2 with one line naming the flag or file


@pytest.mark.parametrize("argv, words", [
    (["attack", "--model", "m", "--batch-size", "0"], ["--batch-size", "positive integer"]),
    (["attack", "--model", "m", "--num-samples", "0"], ["--num-samples", "positive integer"]),
    (["attack", "--model", "m", "--steps", "-1"], ["--steps", ">= 0"]),
    (["attack", "--model", "m", "--eps", "nan"], ["--eps", "positive"]),
    (["evaluate", "--model", "m", "--eps-sweep", "4,abc"], ["--eps-sweep", "'abc'"]),
    (["evaluate", "--model", "m", "--eps-sweep", "4,300"], ["--eps-sweep", "(0, 255]"]),
    (["train", "--eps", "8"], ["--eps", "not 8"]),
])
def test_cli_rejects_bad_flags(argv, words, capsys):
    from hf_videomoe.cli import main

    with pytest.raises(SystemExit) as info:
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
    for argv, path in ((["attack", "--model", str(tmp_path / "model")], "model"),
                       (["push", "--model", str(tmp_path / "good"), "--repo-id", "user/x", "--report",
                         str(tmp_path / "report.json")], "report.json")):
        with pytest.raises(SystemExit) as info:
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
    kwargs = dict(attacks=["fgsm"], eps=2 / 255, batch_size=2, check_gradients=False, check_determinism=False,
                  compute_cost=False, progress=False)
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


def test_push_times_out_retries_and_keeps_the_folder(tmp_path, model, monkeypatch):
    import socket
    import threading
    import time

    from hf_videomoe.hub import HubUploadError, push_robust_checkpoint
    from hf_videomoe.testing import LoopbackHubServer

    import huggingface_hub

    # Loopback only: these servers live on 127.0.0.1 inside this test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
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
        with pytest.raises(HubUploadError) as info:
            push_robust_checkpoint(model, "user/hang", report, endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}",
                                   token="x", local_dir=tmp_path / "kept", plots=False, timeout=1.0, max_retries=1)
        assert time.monotonic() - start < 30
        assert "no answer from the Hub within 1 s" in str(info.value) and str(tmp_path / "kept") in str(info.value)
        assert (tmp_path / "kept" / "model.safetensors").is_file() and (tmp_path / "kept" / "README.md").is_file()
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        silent.close()

    with LoopbackHubServer() as server:  # a transient 500 is retried, then the push succeeds
        server.fail("commit", status=500, repo_id="user/flaky", times=1)
        push_robust_checkpoint(model, "user/flaky", report, endpoint=server.url, token="x", plots=False,
                               timeout=30.0, max_retries=1)
        assert "model.safetensors" in server.files("user/flaky")
        server.fail("commit", status=403, repo_id="user/denied")  # a 4xx is not retried
        with pytest.raises(HubUploadError, match="403|Forbidden"):
            push_robust_checkpoint(model, "user/denied", report, endpoint=server.url, token="x", plots=False,
                                   max_retries=3)
    with pytest.raises(ValueError, match="timeout"):
        push_robust_checkpoint(model, "user/x", report, timeout=0)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"clean_accuracy": 0.5}', ""])
def test_report_load_names_the_file(tmp_path, content):
    from hf_videomoe.evaluation import RobustnessReport

    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"report\.json is not a robustness report"):
        RobustnessReport.load(path)


@pytest.mark.parametrize("rows, words", [
    (lambda x: [{"pixel_values": x[0], "labels": None}], ["labels", "None"]),
    (lambda x: [{"pixel_values": x[0], "labels": 0.7}], ["labels", "integer"]),
    (lambda x: [{"pixel_values": x[0] * float("nan"), "labels": 0}], ["pixel_values", "NaN"]),
    (lambda x: [{"pixel_values": x[0], "labels": 8}], ["[0, 8)"]),
    (lambda x: [], ["empty"]),
])
def test_evaluator_rejects(model, rows, words):
    from hf_videomoe.evaluation import evaluate_robustness

    with pytest.raises(ValueError) as info:
        evaluate_robustness(model, rows(clips()), attacks=["fgsm"], eps=2 / 255, progress=False, compute_cost=False)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("text, expected", [
    ("1. Foo", "1\\. Foo"), ("- bar", "\\- bar"), ("plain_name v2", "plain_name v2"), ("_x_", "\\_x\\_"),
    ("a\n# b", "a \\# b"), ("<b>&", "&lt;b&gt;&amp;"), ("[x](y)", "\\[x\\](y)"),
])
def test_markdown_text(text, expected):
    from hf_videomoe.hub.model_card import markdown_text

    assert markdown_text(text) == expected


def test_string_labels_are_named(model):
    from hf_videomoe.evaluation import evaluate_robustness

    with pytest.raises(ValueError, match="labels must be integer class indices, got 'walk'"):
        evaluate_robustness(model, [{"pixel_values": clips()[0], "labels": "walk"}], attacks=["fgsm"], eps=2 / 255,
                            progress=False, compute_cost=False)
