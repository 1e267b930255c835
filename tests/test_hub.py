"""Tests of the robustness model card and of pushing robust checkpoints, end to end against a loopback Hub server.

huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` at import, so pushes and pulls run in subprocesses that
talk only to the loopback server started here (``hf_videomoe.testing.LoopbackHubServer``).
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import hf_videomoe  # noqa: E402,F401
from hf_videomoe import VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.evaluation import RobustnessReport, evaluate_robustness  # noqa: E402
from hf_videomoe.hub import (  # noqa: E402
    CARD_TAGS,
    ModelCardOptions,
    build_model_card,
    metrics_from_model_card,
    push_robust_checkpoint,
    report_metrics,
)
from hf_videomoe.testing import LoopbackHubServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
EPS = 2 / 255
REPO_OK, REPO_500, REPO_DROP = "user/robust-tiny", "user/fail-500", "user/dropped"
RECIPE = {"method": "j-tlat", "epochs": 3, "eps": "8/255", "lipschitz_weight": 0.1, "learning_rate": 0.001}
DATASET_KWARGS = {"num_videos": 32, "num_frames": 4, "image_size": 16, "seed": 0}


@pytest.fixture(scope="module")
def model(tiny_moe_model):
    return tiny_moe_model().eval()


@pytest.fixture(scope="module")
def inputs():
    return torch.rand(8, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def report(model, inputs):
    with torch.no_grad():
        labels = model(pixel_values=inputs).logits.argmax(-1)
    labels[:2] = (labels[:2] + 1) % 8
    data = [{"pixel_values": x, "labels": int(y)} for x, y in zip(inputs, labels)]
    return evaluate_robustness(
        model,
        data,
        attacks={"fgsm": None, "pgd": None, "square": {"steps": 10}},
        eps=EPS,
        steps=2,
        batch_size=8,
        eps_sweep=[4 / 255],
        dataset_name="MovingShapes",
        progress=False,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Model card


@pytest.fixture(scope="module")
def card_dir(report, tmp_path_factory):
    folder = tmp_path_factory.mktemp("card")
    plots = report.plot(folder / "plots")
    card = build_model_card(
        report,
        model_name="robust-tiny",
        repo_id=REPO_OK,
        training_recipe=RECIPE,
        plots=plots,
        plots_relative_to=folder,
        dataset_kwargs=DATASET_KWARGS,
    )
    card.save(folder / "README.md")
    return folder


def test_card_metrics_round_trip(report, card_dir):
    loaded = ModelCard.load(card_dir / "README.md")
    assert metrics_from_model_card(loaded) == report_metrics(report)  # every metric value equal
    assert metrics_from_model_card(card_dir / "README.md") == report_metrics(report)
    results = loaded.data.eval_results
    assert [r.metric_config for r in results] == ["worst-case", "clean", "fgsm", "pgd", "square"]
    assert results[0].metric_value == report.worst_case_accuracy  # the headline comes first
    assert all(r.metric_type == "accuracy" and r.task_type == "video-classification" for r in results)
    assert all(r.dataset_name == "MovingShapes" and r.dataset_split == "test" for r in results)
    pgd = results[3]
    assert pgd.metric_name == "Robust accuracy (PGD, L∞ ε=2/255, 2 steps)"
    assert pgd.metric_args["attack"] == "pgd" and pgd.metric_args["norm"] == "linf"
    assert pgd.metric_args["eps"] == EPS and pgd.metric_args["steps"] == 2 and pgd.metric_args["seed"] == 0
    assert results[4].metric_name == "Robust accuracy (SQUARE, L∞ ε=2/255, 10 queries)"
    assert loaded.data.model_name == "robust-tiny"


def test_card_metadata_and_body(report, card_dir):
    loaded = ModelCard.load(card_dir / "README.md")
    assert set(CARD_TAGS) <= set(loaded.data.tags)
    assert {"video-classification", "mixture-of-experts", "adversarial-robustness", "hf_videomoe"} <= set(
        loaded.data.tags
    )
    assert loaded.data.library_name == "transformers" and loaded.data.pipeline_tag == "video-classification"
    body = loaded.text
    first = [line for line in body.splitlines() if line.strip()][:2]
    assert first[0] == "# robust-tiny" and "Worst-case robust accuracy" in first[1]  # headline first
    for name in ("eps_sweep", "expert_usage", "perturbation_energy"):
        assert f"](plots/{name}.png)" in body  # relative image links ...
        assert (card_dir / "plots" / f"{name}.png").is_file()  # ... to files next to the README
    assert "| lipschitz_weight | 0.1 |" in body and "| method | j-tlat |" in body  # training recipe
    assert "GFLOPs per clip" in body and "Dense model (same shape)" in body  # cost table
    assert "## Reliability checks" in body
    assert f"hf download {REPO_OK} --local-dir checkpoint" in body
    assert "hf-videomoe evaluate --model checkpoint" in body and "--attacks fgsm,pgd,square" in body
    assert "--dataset moving-shapes" in body and "--num-videos 32" in body
    assert "evaluate_robustness(" in body and "'square': {'name': 'square'" in body


def test_card_cli_command_parses(report, card_dir):
    """The generated command is valid for the `hf-videomoe` parser."""
    from hf_videomoe.cli import build_parser

    body = ModelCard.load(card_dir / "README.md").text
    block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    command = block.split("hf-videomoe ", 1)[1].replace("\\\n", " ").split()
    args = build_parser().parse_args(command)
    assert args.command == "evaluate" and args.attacks == "fgsm,pgd,square" and args.eps == EPS
    assert args.steps == 2 and args.num_samples == 8 and args.eps_sweep == pytest.approx([2 / 255, 4 / 255])


def test_metrics_from_card_without_robustness_metrics_fails():
    with pytest.raises(ValueError, match="no hf_videomoe robustness metrics"):
        metrics_from_model_card(ModelCard("---\nlicense: mit\n---\n# nothing\n"))


# ----------------------------------------------------------------------------------------------------------------------
# Push: bad input


def test_invalid_repo_id_fails_before_any_work(model, report, tmp_path):
    local = tmp_path / "never"
    for bad in ("bad//id", "a/b/c", "-dash-/x", "x" * 200):
        with pytest.raises(ValueError, match="Repo id must"):
            push_robust_checkpoint(model, bad, report, local_dir=local)
    assert not local.exists()


def test_loopback_server_failure_injection():
    with LoopbackHubServer() as server:
        server.create_repo("user/x")
        server.fail("info", status=503, repo_id="user/x", times=1)
        with pytest.raises(urllib.error.HTTPError, match="HTTP Error 503") as err:
            urllib.request.urlopen(f"{server.url}/api/models/user/x", timeout=10)
        assert err.value.code == 503
        info = json.loads(urllib.request.urlopen(f"{server.url}/api/models/user/x", timeout=10).read())
        assert info["id"] == "user/x" and [s["rfilename"] for s in info["siblings"]] == [".gitattributes"]
        with pytest.raises(urllib.error.HTTPError, match="HTTP Error 404") as err:
            urllib.request.urlopen(f"{server.url}/api/models/user/missing", timeout=10)
        assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "RepoNotFound"


def test_loopback_server_state_api():
    """The methods the HTTP handler goes through (hub_protocol never touches the server's private state)."""
    server = LoopbackHubServer()  # no socket needed: the state lives on the object
    assert server.create_repo("user/x") is True
    assert server.create_repo("user/x") is False  # exists: nothing changes
    assert [c["title"] for c in server.commits("user/x")] == ["initial commit"]
    oid = server.add_commit(server.repos["user/x"], "add a", {"a.txt": b"a"})
    assert server.commits("user/x")[-1]["oid"] == oid and server.files("user/x") == {"a.txt": b"a"}
    assert server.files("user/x", revision=server.commits("user/x")[0]["oid"]) != {"a.txt": b"a"}
    mode = server.fail("commit", status=500, repo_id="user/x", times=2)
    assert server.take_failure("info", "user/x") is None
    assert server.take_failure("commit", "user/other") is None
    assert server.take_failure("commit", "user/x") is mode and server.take_failure("commit", "user/x") is mode
    assert server.take_failure("commit", "user/x") is None  # used up
    server.record_request("GET", "/api/models/user/x")
    assert server.requests == [("GET", "/api/models/user/x")]


def test_loopback_server_client_env(tmp_path, monkeypatch):
    """A subprocess gets the server's URL, its own HF_HOME for every cache and token, a test token, the offline switch
    lifted and loopback exempt from proxies; the rest of the environment is kept."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "developer-cache"))  # would override HF_HOME's hub cache
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "developer-token"))
    monkeypatch.setenv("HF_TOKEN", "hf_real_token")
    with pytest.raises(RuntimeError, match="not running"):
        LoopbackHubServer().client_env(tmp_path)
    with LoopbackHubServer() as server:
        env = server.client_env(tmp_path / "hf")
        assert env["HF_ENDPOINT"] == server.url and env["HF_HOME"] == str(tmp_path / "hf")
        assert "HF_HUB_CACHE" not in env and "HF_TOKEN_PATH" not in env
        assert env["HF_TOKEN"] == "test-token" and env["HF_HUB_DISABLE_TELEMETRY"] == "1"
        assert env["HF_HUB_OFFLINE"] == "0" and env["HTTPS_PROXY"] == "http://proxy.invalid:3128"  # the rest is kept
        assert "127.0.0.1" in env["NO_PROXY"].split(",") and "127.0.0.1" in env["no_proxy"].split(",")
        env = server.client_env(tmp_path / "hf", OMP_NUM_THREADS="1", HF_TOKEN="other")
        assert env["OMP_NUM_THREADS"] == "1" and env["HF_TOKEN"] == "other"  # extra wins
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # this process keeps its switch


def test_card_options_object_and_keywords_agree():
    report = RobustnessReport(
        clean_accuracy=0.9,
        robust_accuracy={"pgd": 0.5},
        worst_case_accuracy=0.5,
        num_samples=8,
        eps=EPS,
        attacks=["pgd"],
    )
    by_keywords = build_model_card(report, "m", repo_id="me/m", dataset_split="val", training_recipe=RECIPE)
    options = ModelCardOptions(repo_id="me/other", dataset_split="val", training_recipe=RECIPE)
    by_options = build_model_card(report, "m", options=options, repo_id="me/m")  # a keyword overrides a field
    assert by_options.content == by_keywords.content
    assert options.repo_id == "me/other"  # the caller's options are not modified
    with pytest.raises(TypeError, match="unexpected keyword argument 'plot'"):
        build_model_card(report, "m", plot={})


# ----------------------------------------------------------------------------------------------------------------------
# Push / pull end to end


PUSH_SCRIPT = """
import json, sys
import hf_videomoe
from transformers import AutoModelForVideoClassification
from hf_videomoe.evaluation import RobustnessReport
from hf_videomoe.hub import HubUploadError, push_robust_checkpoint

work = sys.argv[1]
model = AutoModelForVideoClassification.from_pretrained(work + "/model")
report = RobustnessReport.load(work + "/report.json")
results = {}
for repo_id in REPOS:
    local_dir = work + "/local/" + repo_id.split("/")[1]
    try:
        info = push_robust_checkpoint(model, repo_id, report, token="hf_loopback_test", local_dir=local_dir,
                                      model_name="robust-tiny", training_recipe=RECIPE, dataset_kwargs=DATASET_KWARGS)
        results[repo_id] = {"ok": True, "commit_url": str(info), "oid": info.oid}
    except HubUploadError as err:
        results[repo_id] = {"ok": False, "type": type(err).__name__, "runtime_error": isinstance(err, RuntimeError),
                            "message": str(err), "cause": type(err.__cause__).__name__, "local_dir": str(err.local_dir)}
print("RESULTS " + json.dumps(results))
"""

PULL_SCRIPT = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
import hf_videomoe
from huggingface_hub import ModelCard, hf_hub_download
from transformers import AutoModelForVideoClassification
from hf_videomoe.hub import metrics_from_model_card

work, repo_id = sys.argv[1], sys.argv[2]
model = AutoModelForVideoClassification.from_pretrained(repo_id).eval()
with torch.no_grad():
    logits = model(pixel_values=load_file(work + "/inputs.safetensors")["pixel_values"]).logits
save_file({"logits": logits.contiguous()}, work + "/pulled_logits.safetensors")
card = ModelCard.load(repo_id)
report_path = hf_hub_download(repo_id, "report.json")
print("RESULTS " + json.dumps({"metrics": metrics_from_model_card(card), "report_path": report_path,
                              "model_class": type(model).__name__}))
"""


def _hub_env(server, home):
    return server.client_env(home, HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))


def _run(script, args, env, cwd):
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=240, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS ") :])


@pytest.fixture(scope="module")
def hub():
    with LoopbackHubServer() as server:
        server.fail("commit", status=500, repo_id=REPO_500)
        server.fail("commit", drop=True, repo_id=REPO_DROP)
        yield server


@pytest.fixture(scope="module")
def pushed(hub, model, inputs, report, tmp_path_factory):
    work = tmp_path_factory.mktemp("push")
    model.save_pretrained(work / "model")
    report.save(work / "report.json")
    save_file({"pixel_values": inputs.contiguous()}, str(work / "inputs.safetensors"))
    script = (
        PUSH_SCRIPT.replace("REPOS", repr([REPO_OK, REPO_500, REPO_DROP]))
        .replace("RECIPE", repr(RECIPE))
        .replace("DATASET_KWARGS", repr(DATASET_KWARGS))
    )
    results = _run(script, [str(work)], _hub_env(hub, work / "hf_home_push"), work)
    return work, results


def test_push_uploads_everything_in_one_commit(pushed, hub, report):
    work, results = pushed
    ok = results[REPO_OK]
    assert ok["ok"], ok
    commits = hub.commits(REPO_OK)
    assert len(commits) == 2 and commits[-1]["oid"] == ok["oid"]  # repo creation + ONE upload commit
    files = hub.files(REPO_OK)
    local = work / "local" / "robust-tiny"
    expected = {
        "config.json",
        "model.safetensors",
        "README.md",
        "report.json",
        "robustness_report.md",
        "plots/eps_sweep.png",
        "plots/expert_usage.png",
        "plots/perturbation_energy.png",
    }
    assert expected <= set(files)
    for name in expected:
        assert files[name] == (local / name).read_bytes()
    assert RobustnessReport.from_json(files["report.json"].decode()) == report
    assert "Worst-case robust accuracy" in commits[-1]["title"] or commits[-1]["title"].startswith("Upload robust")


def test_pull_from_endpoint_gives_identical_logits_and_metrics(pushed, hub, model, inputs, report):
    work, results = pushed
    assert results[REPO_OK]["ok"]
    pulled = _run(PULL_SCRIPT, [str(work), REPO_OK], _hub_env(hub, work / "hf_home_pull"), work)
    assert pulled["model_class"] == "VideoMAEMoeForVideoClassification"
    with torch.no_grad():
        expected = model(pixel_values=inputs).logits
    assert torch.equal(load_file(str(work / "pulled_logits.safetensors"))["logits"], expected)
    assert pulled["metrics"] == report_metrics(report)
    assert RobustnessReport.load(pulled["report_path"]) == report


@pytest.mark.parametrize("repo_id, cause", [(REPO_500, "HfHubHTTPError"), (REPO_DROP, "RemoteProtocolError")])
def test_failed_upload_raises_clear_error_and_keeps_local_checkpoint(pushed, hub, report, repo_id, cause):
    work, results = pushed
    result = results[repo_id]
    local = work / "local" / repo_id.split("/")[1]
    assert not result["ok"] and result["type"] == "HubUploadError" and result["runtime_error"]
    assert result["cause"].endswith(cause) or cause in result["message"]
    message = result["message"]
    assert message.startswith("Upload of the robust checkpoint") and f"{hub.url}/{repo_id}" in message
    assert "failed while committing" in message and f"your checkpoint and report are kept in {local}" in message
    assert Path(result["local_dir"]) == local
    # the local checkpoint, card and report are intact and loadable
    for name in ("config.json", "model.safetensors", "README.md", "report.json", "plots/eps_sweep.png"):
        assert (local / name).is_file()
    assert RobustnessReport.load(local / "report.json") == report
    assert metrics_from_model_card(local / "README.md") == report_metrics(report)
    assert VideoMAEMoeForVideoClassification.from_pretrained(local) is not None
    assert len(hub.commits(repo_id)) == 1  # only the repo creation: nothing half-uploaded


def test_card_image_links_resolve_wherever_the_card_is_written(tmp_path, card_report):
    import re

    from hf_videomoe.hub import build_model_card

    report = card_report(eps_sweep={"pgd": {1 / 255: 0.8, 4 / 255: 0.5}})
    plots = report.plot(tmp_path / "reports" / "plots")
    assert plots
    card = build_model_card(report, model_name="m", plots=plots)
    for target in (
        tmp_path / "reports" / "README.md",
        tmp_path / "elsewhere" / "deep" / "README.md",
        tmp_path / "reports" / "plots" / "README.md",
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        card.save(target)
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", target.read_text())
        assert links and len(links) == len(plots)
        for link in links:
            assert not link.startswith("/") and (target.parent / link).resolve().is_file(), link


def test_cascade_report_card_says_so(model, inputs, tmp_path):
    """A cascade report's card names its cumulative metrics as such and reproduces with the same mode."""
    from hf_videomoe.cli import build_parser

    with torch.no_grad():
        labels = model(pixel_values=inputs).logits.argmax(-1)
    data = [{"pixel_values": x, "labels": int(y)} for x, y in zip(inputs, labels)]
    report = evaluate_robustness(
        model,
        data,
        attacks=["fgsm", "pgd"],
        eps=EPS,
        steps=2,
        batch_size=8,
        dataset_name="MovingShapes",
        progress=False,
        mode="cascade",
    )
    card = build_model_card(report, model_name="cascade-tiny", dataset_kwargs=DATASET_KWARGS)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    pgd = next(r for r in loaded.data.eval_results if r.metric_config == "pgd")
    assert "cascade" in pgd.metric_name and pgd.metric_args["mode"] == "cascade"
    body = loaded.text
    assert "mode='cascade'" in body
    block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    args = build_parser().parse_args(block.split("hf-videomoe ", 1)[1].replace("\\\n", " ").split())
    assert args.mode == "cascade"
