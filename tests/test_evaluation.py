"""Tests of the robustness evaluator, its report, reliability flags, plots and metrics (tiny models, 8 samples)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import hf_videomoe  # noqa: E402,F401
from hf_videomoe import VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.evaluation import (  # noqa: E402
    ROBUST_ACCURACY_METRIC_PATH,
    FlagThresholds,
    ReliabilityFlag,
    RobustnessReport,
    compute_metrics,
    evaluate_robustness,
    format_eps,
)
from hf_videomoe.evaluation.flags import compute_flags  # noqa: E402
from hf_videomoe.evaluation.runner import BatchEvaluator  # noqa: E402
from hf_videomoe.moe import moe_blocks  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_SAMPLES = 8
EPS = 2 / 255
# The main evaluation: two white-box attacks, the black-box Square, an ε sweep and the steps check.
MAIN_KWARGS = dict(
    attacks={"fgsm": None, "pgd": None, "square": {"steps": 10}},
    eps=EPS,
    steps=2,
    seed=0,
    batch_size=4,
    eps_sweep=[1 / 255, 4 / 255],
    sweep_attacks=["pgd"],
    check_steps=True,
    check_steps_samples=4,
    return_per_sample=True,
    dataset_name="random-clips",
    progress=False,
)


@pytest.fixture(scope="module")
def make_model(tiny_moe_model):
    """Factory: ``make_model(seed=0, expert_scale=5.0)`` -> a tiny MoE whose routing matters: at the default init the
    MLPs barely move the residual stream, so random routing would give the same predictions (and raise
    `routing_irrelevant`); scaled experts make routing decisive."""

    def make(seed=0, expert_scale=5.0):
        model = tiny_moe_model(seed).eval()
        with torch.no_grad():
            for block in moe_blocks(model):
                block.experts.up_proj.mul_(expert_scale)
                block.experts.down_proj.mul_(expert_scale)
        return model

    return make


@pytest.fixture(scope="module")
def model(make_model):
    return make_model()


@pytest.fixture(scope="module")
def data(model, model_labelled_clips):
    """Random clips labelled with the model's own predictions (so clean accuracy is high and attacks have something
    to break), except the first 2 samples, whose label is shifted (clean mistakes)."""
    return model_labelled_clips(model, NUM_SAMPLES, seed=1, wrong=2)


@pytest.fixture(scope="module")
def report(model, data):
    return evaluate_robustness(model, data, **MAIN_KWARGS)


# ----------------------------------------------------------------------------------------------------------------------
# The report


def test_accuracy_invariants_per_sample(report):
    ps = report.per_sample
    assert report.num_samples == NUM_SAMPLES == len(ps["label"])
    assert ps["index"] == list(range(NUM_SAMPLES))
    clean = [p == l for p, l in zip(ps["clean_prediction"], ps["label"])]
    robust = {a: [c and p == l for c, p, l in zip(clean, ps["predictions"][a], ps["label"])] for a in report.attacks}
    for i in range(NUM_SAMPLES):
        # worst case <= every single attack <= clean, per sample
        assert ps["worst_case_correct"][i] == all(robust[a][i] for a in report.attacks)
        for a in report.attacks:
            assert ps["worst_case_correct"][i] <= robust[a][i] <= clean[i]
    assert report.clean_accuracy == sum(clean) / NUM_SAMPLES == 0.75  # two clean mistakes by construction
    for a in report.attacks:
        assert report.robust_accuracy[a] == sum(robust[a]) / NUM_SAMPLES
        assert report.worst_case_accuracy <= report.robust_accuracy[a] <= report.clean_accuracy
    assert report.worst_case_accuracy == sum(ps["worst_case_correct"]) / NUM_SAMPLES
    assert report.robust_accuracy["pgd"] < report.clean_accuracy  # the attack does something


def test_settings_and_diagnostics_recorded(report):
    assert report.attacks == ["fgsm", "pgd", "square"]
    assert report.eps == EPS and report.norm == "linf" and report.seed == 0 and report.steps == 2
    assert report.batch_size == 4
    pgd = report.attack_settings["pgd"]
    assert pgd["steps"] == 2 and pgd["seed"] == 0 and pgd["eps"] == EPS
    assert math.isclose(pgd["step_size"], 2.5 * EPS / 2)
    assert report.attack_settings["square"]["steps"] == 10  # Square keeps its own query budget
    assert report.model_class == "VideoMAEMoeForVideoClassification" and report.model_type == "videomae_moe"
    # routing diagnostics for every attack, per layer (2 MoE layers)
    for a in report.attacks:
        assert 0.0 <= report.routing_change[a] <= 1.0
        assert len(report.routing_change_per_layer[a]) == 2
        assert math.isclose(report.routing_change[a], sum(report.routing_change_per_layer[a]) / 2)
        assert report.router_lipschitz[a] >= 0.0
        assert len(report.perturbation_energy[a]) == 4  # one value per frame
        assert all(e > 0 for e in report.perturbation_energy[a])
    assert set(report.expert_usage) == {"clean", "fgsm", "pgd", "square"}
    for usage in report.expert_usage.values():
        assert len(usage) == 2 and all(len(layer) == 4 and math.isclose(sum(layer), 1.0) for layer in usage)
    # ε sweep includes the main ε; the steps check ran on the first 4 samples
    assert sorted(report.eps_sweep["pgd"]) == [1 / 255, EPS, 4 / 255]
    assert report.eps_sweep["pgd"][EPS] == report.robust_accuracy["pgd"]
    assert report.steps_check["pgd"]["num_samples"] == 4 and report.steps_check["pgd"]["doubled_steps"] == 4
    # cost next to the dense model of the same shape
    assert report.flops > 0 and report.dense_flops > 0
    assert report.total_parameters > report.active_parameters >= report.dense_parameters > 0
    assert set(report.versions) == {"hf_videomoe", "torch", "transformers"}


def test_flags_quiet_on_plain_model(report):
    assert report.flags == []
    assert report.checks == {
        "gradient_masking": "passed",
        "eps_monotonicity": "passed",
        "steps_monotonicity": "passed",
        "determinism": "passed",
        "gradients": "passed",
        "router_collapse": "passed",
        "routing_relevance": "passed",
        "logit_outputs": "passed",
    }


def test_probability_outputs_are_flagged(model, data):
    """A model that returns softmax probabilities instead of logits is flagged; its logits twin is not."""
    from types import SimpleNamespace

    class Probabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, pixel_values, **kwargs):
            return SimpleNamespace(logits=self.inner(pixel_values=pixel_values).logits.softmax(-1))

    kwargs = dict(
        attacks=["pgd"],
        steps=1,
        batch_size=8,
        compute_cost=False,
        check_gradients=False,
        progress=False,
        diagnostics=False,
    )
    flagged = evaluate_robustness(Probabilities(model), data, **kwargs)
    assert "probability_outputs" in flagged.flag_names and flagged.checks["logit_outputs"] == "flagged"
    plain = evaluate_robustness(model, data, **kwargs)
    assert "probability_outputs" not in plain.flag_names and plain.checks["logit_outputs"] == "passed"


def test_routing_stats_match_attack_diagnostics(model, data):
    from hf_videomoe.attacks import build_attack, diagnostics

    x = torch.stack([d["pixel_values"] for d in data])
    y = torch.tensor([d["labels"] for d in data])
    attack = build_attack("pgd", eps=EPS, steps=2, seed=0)
    single = evaluate_robustness(
        model,
        data,
        attacks=[attack],
        batch_size=8,
        check_determinism=False,
        check_gradients=False,
        compute_cost=False,
        progress=False,
    )
    adv = attack.perturb(model, x, y)
    expected = diagnostics.routing_change(model, x, adv)
    assert math.isclose(single.routing_change["pgd"], expected["overall"], rel_tol=1e-6)
    for got, want in zip(single.routing_change_per_layer["pgd"], expected["per_layer"]):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(single.router_lipschitz["pgd"], diagnostics.router_lipschitz(model, x, adv), rel_tol=1e-5)
    for got, want in zip(single.expert_usage["pgd"], diagnostics.expert_usage(model, adv)):
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), want.double(), atol=1e-6)


def test_json_roundtrip(report, tmp_path):
    text = report.to_json()
    json.loads(text)  # valid JSON
    again = RobustnessReport.from_json(text)
    assert again == report
    assert all(isinstance(e, float) for curve in again.eps_sweep.values() for e in curve)
    path = report.save(tmp_path / "report.json")
    assert RobustnessReport.load(path) == report
    assert RobustnessReport.load(path).to_json() == text


def test_markdown_and_plots(report, tmp_path):
    md = report.to_markdown()
    assert "Worst-case robust accuracy" in md.splitlines()[2]
    assert "| PGD, L∞ ε=2/255, 2 steps |" in md
    assert "| SQUARE, L∞ ε=2/255, 10 queries |" in md
    assert "Robust accuracy vs ε" in md and "Inference cost" in md and "No reliability flag" in md
    paths = report.plot(tmp_path / "plots")
    assert set(paths) == {"eps_sweep", "expert_usage", "perturbation_energy"}
    for path in paths.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(path).stat().st_size > 1000


def test_format_eps():
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(0.5, "l2") == "1/2"
    assert format_eps(0.123456, "l2") == "0.1235"


# ----------------------------------------------------------------------------------------------------------------------
# Reliability flags


class ZeroGradient(nn.Module):
    """The same classifier, but its input gradient is exactly zero (``x.detach() + 0 * x``): gradient attacks only
    get their random start, while the black-box Square attack still works."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, pixel_values, **kwargs):
        return self.inner(pixel_values=pixel_values.detach() + 0 * pixel_values, **kwargs)


class NoisyLogits(nn.Module):
    """Random logit noise at inference: a non-deterministic forward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, pixel_values, **kwargs):
        out = self.inner(pixel_values=pixel_values, **kwargs)
        out.logits = out.logits + 0.5 * torch.randn_like(out.logits)
        return out


def test_flags_fire_on_gradient_masking_model(model, data):
    masked = ZeroGradient(model).eval()
    report = evaluate_robustness(
        masked,
        data,
        attacks={"pgd": None, "square": {"steps": 30}},
        eps=8 / 255,
        steps=2,
        batch_size=4,
        compute_cost=False,
        progress=False,
    )
    names = report.flag_names
    assert "zero_gradients" in names and "gradient_masking" in names
    zero = next(f for f in report.flags if f.name == "zero_gradients")
    assert zero.evidence["zero_or_nan_fraction"] == 1.0 and "BPDA" in zero.message
    masking = next(f for f in report.flags if f.name == "gradient_masking")
    assert masking.evidence["black_box_attack"] == "square"
    assert masking.evidence["white_box_accuracy"]["pgd"] - masking.evidence["black_box_accuracy"] > 0.05
    assert report.checks["gradient_masking"] == "flagged" and report.checks["gradients"] == "flagged"
    assert "gradient_masking" in report.to_markdown()


def test_non_deterministic_forward_flag(model, data):
    report = evaluate_robustness(
        NoisyLogits(model),
        data,
        attacks=["fgsm"],
        eps=EPS,
        batch_size=8,
        check_gradients=False,
        diagnostics=False,
        compute_cost=False,
        progress=False,
    )
    assert report.flag_names == ["non_deterministic_forward"]
    assert report.flags[0].evidence["max_abs_logit_diff"] > 1e-4


def test_router_collapse_flag_on_a_collapsed_moe(data, make_model):
    # Zero router weights give every routing unit equal logits, so top-1 sends all of them to expert 0.
    collapsed = make_model()
    with torch.no_grad():
        for block in moe_blocks(collapsed):
            block.router.weight.zero_()
    report = evaluate_robustness(
        collapsed,
        data,
        attacks=["fgsm"],
        eps=EPS,
        batch_size=8,
        check_gradients=False,
        check_determinism=False,
        compute_cost=False,
        progress=False,
    )
    assert "router_collapse" in report.flag_names, report.checks
    flag = next(f for f in report.flags if f.name == "router_collapse")
    assert set(flag.evidence["busiest_expert_share"].values()) == {1.0}
    assert report.checks["router_collapse"] == "flagged"


class WeakerWithEps:
    """A stand-in attack that perturbs (FGSM) only for ε <= 2/255: robust accuracy then rises with ε."""

    name = "weird"
    requires_moe = False

    def __init__(self, eps=EPS):
        self.eps = eps

    def settings(self):
        return {"name": self.name, "eps": self.eps}

    def perturb(self, model, x, y):
        from hf_videomoe.attacks import build_attack

        if self.eps > 2 / 255 + 1e-9:
            return x.clone()
        return build_attack("fgsm", eps=self.eps).perturb(model, x, y)


def test_eps_monotonicity_flag_with_stand_in_attack(model, data):
    report = evaluate_robustness(
        model,
        data,
        attacks=[WeakerWithEps()],
        eps=EPS,
        eps_sweep=[8 / 255],
        batch_size=8,
        check_gradients=False,
        check_determinism=False,
        diagnostics=False,
        compute_cost=False,
        progress=False,
    )
    assert report.eps_sweep["weird"][8 / 255] > report.eps_sweep["weird"][EPS]
    assert report.flag_names == ["non_monotonic_eps"]
    assert report.flags[0].evidence["increases"]["weird"][0]["larger_eps"] == round(8 / 255, 6)


def relevance(learned, random, se):
    return {
        "learned": learned,
        "random": random,
        "forced": [learned] * 4,
        "learned_minus_random": learned - random,
        "learned_minus_random_se": se,
        "forced_spread": 0.0,
        "num_samples": 256,
    }


@pytest.mark.parametrize(
    "learned, random, se, expected",
    [
        (0.80, 0.50, 0.03, None),  # clearly better than random
        (0.66, 0.65, 0.00, "routing_irrelevant"),  # inside the 2-point margin
        (0.70, 0.65, 0.03, "routing_irrelevant"),  # 5 points, but inside 2 standard errors
        (0.70, 0.65, 0.01, None),  # 5 points and 5 standard errors
        (0.25, 0.39, 0.03, "routing_worse_than_random"),  # the demo's PGD-AT MoE before the gate fix
    ],
)
def test_routing_relevance_flags(learned, random, se, expected):
    flags, checks = compute_flags(
        robust_accuracy={"pgd": 0.3},
        white_box=["pgd"],
        black_box=[],
        eps_sweep={},
        sweep_requested=False,
        steps_check={},
        steps_requested=False,
        determinism=None,
        gradients=None,
        thresholds=FlagThresholds(),
        routing_relevance=relevance(learned, random, se),
    )
    assert [f.name for f in flags] == ([expected] if expected else [])
    assert checks["routing_relevance"] == ("flagged" if expected else "passed")


def test_compute_flags_thresholds():
    base = dict(
        white_box=["pgd"],
        black_box=["square"],
        sweep_requested=True,
        steps_requested=True,
        determinism={"max_abs_diff": 0.0, "prediction_changed_fraction": 0.0},
        gradients={"bad_fraction": 0.0, "num_samples": 8, "median_norm": 1.0},
        thresholds=FlagThresholds(),
    )
    flags, checks = compute_flags(
        robust_accuracy={"pgd": 0.30, "square": 0.28},
        eps_sweep={"pgd": {1 / 255: 0.5, 2 / 255: 0.3, 4 / 255: 0.1}},
        steps_check={
            "pgd": {"steps": 10, "doubled_steps": 20, "num_samples": 8, "accuracy": 0.3, "doubled_accuracy": 0.3}
        },
        expert_usage=[[0.25, 0.25, 0.3, 0.2], [0.9, 0.05, 0.05, 0.0]],
        routing_relevance=relevance(learned=0.8, random=0.5, se=0.05),
        probability_outputs=False,
        **base,
    )
    assert flags == [] and set(checks.values()) == {"passed"}
    flags, checks = compute_flags(
        robust_accuracy={"pgd": 0.30, "square": 0.10},
        eps_sweep={"pgd": {1 / 255: 0.2, 2 / 255: 0.3}},
        steps_check={
            "pgd": {"steps": 10, "doubled_steps": 20, "num_samples": 8, "accuracy": 0.2, "doubled_accuracy": 0.4}
        },
        **{
            **base,
            "determinism": {"max_abs_diff": 0.5, "prediction_changed_fraction": 0.25},
            "gradients": {"bad_fraction": 0.5, "num_samples": 8, "median_norm": 0.0},
        },
        expert_usage=[[0.25, 0.25, 0.3, 0.2], [0.96, 0.04, 0.0, 0.0]],
        routing_relevance=relevance(learned=0.25, random=0.39, se=0.03),
        probability_outputs=True,
    )
    assert [f.name for f in flags] == [
        "gradient_masking",
        "non_monotonic_eps",
        "non_monotonic_steps",
        "non_deterministic_forward",
        "zero_gradients",
        "router_collapse",
        "routing_worse_than_random",
        "probability_outputs",
    ]
    assert flags[-3].evidence["busiest_expert_share"] == {"1": 0.96}  # MoE layer index -> share
    assert all(isinstance(f, ReliabilityFlag) and f.message and f.evidence for f in flags)
    assert set(checks.values()) == {"flagged"}
    _, checks = compute_flags(
        robust_accuracy={"pgd": 0.3},
        eps_sweep={},
        steps_check={},
        **{
            **base,
            "black_box": [],
            "sweep_requested": False,
            "steps_requested": False,
            "determinism": None,
            "gradients": None,
        },
    )
    assert all(status.startswith("skipped") for status in checks.values())


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any attack runs


class SpyAttack:
    name = "spy"
    requires_moe = False

    def __init__(self):
        self.calls = 0
        self.eps = EPS

    def settings(self):
        return {"name": self.name}

    def perturb(self, model, x, y):
        self.calls += 1
        return x.clone()


def test_bad_inputs_fail_before_any_attack(model, data):
    spy = SpyAttack()
    quiet = dict(progress=False, compute_cost=False)
    with pytest.raises(ValueError, match="Unknown attack 'pgdd'.*Did you mean 'pgd'"):
        evaluate_robustness(model, data, attacks=["pgdd"], **quiet)
    for eps in (-0.1, 0.0, 2.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            evaluate_robustness(model, data, attacks=[spy], eps=eps, **quiet)
    with pytest.raises(ValueError, match="eps_sweep is empty"):
        evaluate_robustness(model, data, attacks=[spy], eps_sweep=[], **quiet)
    with pytest.raises(ValueError, match="eps_sweep value"):
        evaluate_robustness(model, data, attacks=[spy], eps_sweep=[4 / 255, 3.0], **quiet)
    with pytest.raises(ValueError, match="empty"):
        evaluate_robustness(model, [], attacks=[spy], **quiet)
    with pytest.raises(ValueError, match="no labels"):
        evaluate_robustness(model, [{"pixel_values": d["pixel_values"]} for d in data], attacks=[spy], **quiet)
    wrong_shape = [{"pixel_values": torch.rand(8, 3, 16, 16), "labels": 0}]
    with pytest.raises(ValueError, match=r"\(8, 3, 16, 16\).*expects \(4, 3, 16, 16\).*num_frames=4"):
        evaluate_robustness(model, wrong_shape, attacks=[spy], **quiet)
    with pytest.raises(ValueError, match=r"Labels must be class indices in \[0, 8\)"):
        evaluate_robustness(model, [{"pixel_values": data[0]["pixel_values"], "labels": 9}], attacks=[spy], **quiet)
    with pytest.raises(ValueError, match="unique"):
        evaluate_robustness(model, data, attacks=["pgd", "pgd"], **quiet)
    with pytest.raises(ValueError, match="does not take"):
        evaluate_robustness(model, data, attacks={"pgd": {"bogus": 1}}, **quiet)
    with pytest.raises(ValueError, match="norm"):
        evaluate_robustness(model, data, attacks=[spy], norm="l1", **quiet)
    assert spy.calls == 0


def test_moe_attack_on_dense_model_rejected(tiny_videomae_config):
    from transformers import VideoMAEForVideoClassification

    from hf_videomoe.evaluation import dense_equivalent_config

    dense = VideoMAEForVideoClassification(dense_equivalent_config(tiny_videomae_config(num_experts=4)))
    data = [{"pixel_values": torch.rand(4, 3, 16, 16), "labels": 0}]
    with pytest.raises(ValueError, match="no MoE layer"):
        evaluate_robustness(dense, data, attacks=["j-tlga"], progress=False, compute_cost=False)


def test_datasetdict_rejected(make_model):
    import datasets

    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list([{"labels": 0, "x": 1}])})
    with pytest.raises(TypeError, match="pass one split"):
        evaluate_robustness(make_model(), dd, attacks=[SpyAttack()], progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# Input forms


def test_dataset_forms_give_the_same_report(model, data):
    import datasets

    kwargs = dict(
        attacks=["fgsm"],
        eps=EPS,
        batch_size=3,
        check_gradients=False,
        check_determinism=False,
        compute_cost=False,
        progress=False,
        return_per_sample=True,
    )
    reference = evaluate_robustness(model, data, **kwargs)
    columns = {"pixel_values": [d["pixel_values"].numpy() for d in data], "labels": [d["labels"] for d in data]}
    hf = datasets.Dataset.from_dict(columns)
    loader = torch.utils.data.DataLoader(hf.with_format("torch"), batch_size=5)  # regrouped into batches of 3
    for form in (hf.with_format("torch"), hf, loader, iter(data)):
        assert evaluate_robustness(model, form, **kwargs) == reference
    assert evaluate_robustness(model, data, max_samples=5, **kwargs).num_samples == 5


# ----------------------------------------------------------------------------------------------------------------------
# Resume


def test_resume_after_interruption_gives_identical_report(model, data, report, tmp_path, monkeypatch, make_model):
    state = tmp_path / "state"

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(progress):
        raise Interrupted(f"simulated interruption after batch {progress['batch_index']}")

    with pytest.raises(Interrupted, match="simulated interruption after batch 0"):
        evaluate_robustness(model, data, state_dir=state, callback=stop_after_first_batch, **MAIN_KWARGS)
    assert sorted(p.name for p in (state / "batches").iterdir()) == ["batch_0000000.json"]
    json.loads((state / "batches" / "batch_0000000.json").read_text())  # plain JSON state

    calls = []
    original = BatchEvaluator.run_batch

    def counting(self, batch):
        calls.append(batch.index)
        return original(self, batch)

    monkeypatch.setattr(BatchEvaluator, "run_batch", counting)
    resumed = evaluate_robustness(model, data, state_dir=state, **MAIN_KWARGS)
    assert calls == [1]  # the finished batch was skipped
    assert resumed == report  # identical to the uninterrupted run
    again = evaluate_robustness(model, data, state_dir=state, **MAIN_KWARGS)
    assert calls == [1] and again == report  # nothing left to compute

    with pytest.raises(ValueError, match=r"different settings(.|\n)*eps"):
        evaluate_robustness(model, data, state_dir=state, **{**MAIN_KWARGS, "eps": 3 / 255})
    with pytest.raises(ValueError, match=r"different settings(.|\n)*weights_sha256"):
        evaluate_robustness(make_model(seed=1), data, state_dir=state, **MAIN_KWARGS)
    assert calls == [1]


# ----------------------------------------------------------------------------------------------------------------------
# Metrics


def test_compute_metrics_for_trainer():
    from transformers import EvalPrediction

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]]).numpy()
    labels = torch.tensor([0, 1, 1, -100]).numpy()
    assert compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 2 / 3}
    router = (torch.zeros(4, 3, 2).numpy(),)
    aux = torch.tensor(0.1).numpy()
    assert compute_metrics(EvalPrediction(predictions=(logits, aux, router), label_ids=labels)) == {"accuracy": 2 / 3}
    assert compute_metrics((logits.argmax(-1), labels)) == {"accuracy": 2 / 3}


def test_robust_accuracy_metric_loads_offline(report, tmp_path):
    """`evaluate.load` of the packaged metric by path, with the Hub and datasets offline, in a fresh process."""
    report_path = report.save(tmp_path / "report.json")
    script = f"""
import json, evaluate
from hf_videomoe.evaluation import ROBUST_ACCURACY_METRIC_PATH, RobustnessReport, load_robust_accuracy_metric
from hf_videomoe.evaluation import robust_accuracy_inputs
report = RobustnessReport.load({str(report_path)!r})
metric = evaluate.load(ROBUST_ACCURACY_METRIC_PATH)
out = metric.compute(**robust_accuracy_inputs(report))
out2 = load_robust_accuracy_metric().compute(predictions=[[1, 1, 1], [2, 2, 0], [3, 0, 3]], references=[1, 2, 0],
                                             attack_names=["a", "b"])
print(json.dumps({{"report": out, "toy": out2}}))
"""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp_path / "hf_home"),
        PYTHONPATH=str(REPO_ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["report"]["robust_accuracy"] == report.worst_case_accuracy
    assert result["report"]["clean_accuracy"] == report.clean_accuracy
    assert result["report"]["attack_accuracy"] == [report.robust_accuracy[a] for a in report.attacks]
    assert result["report"]["accuracy_pgd"] == report.robust_accuracy["pgd"]
    toy = result["toy"]
    assert toy["robust_accuracy"] == 1 / 3 and toy["clean_accuracy"] == 2 / 3
    assert toy["accuracy_a"] == 2 / 3 and toy["accuracy_b"] == 1 / 3
    assert Path(ROBUST_ACCURACY_METRIC_PATH, "robust_accuracy.py").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# Sharding under Accelerate (torchrun, 2 CPU processes)

SHARD_KWARGS = dict(
    attacks={"fgsm": None, "pgd": None},
    eps=2 / 255,
    steps=2,
    batch_size=2,
    eps_sweep=[4 / 255],
    return_per_sample=True,
    progress=False,
)

SHARD_SCRIPT = """
import json, os, sys
import torch
from safetensors.torch import load_file
import hf_videomoe
from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.evaluation import evaluate_robustness

workdir = sys.argv[1]
model = VideoMAEMoeForVideoClassification.from_pretrained(os.path.join(workdir, "model")).eval()
tensors = load_file(os.path.join(workdir, "data.safetensors"))
data = [{"pixel_values": x, "labels": int(y)} for x, y in zip(tensors["pixel_values"], tensors["labels"])]
done = []
report = evaluate_robustness(model, data, callback=lambda p: done.append(p["batch_index"]), **KWARGS)
rank = int(os.environ["RANK"])
print(f"rank {rank} evaluated batches {done}", flush=True)
with open(os.path.join(workdir, f"report_{rank}.json"), "w") as handle:
    handle.write(report.to_json())
"""


def test_sharded_evaluation_equals_single_process(model, data, tmp_path):
    """torchrun with 2 CPU processes: each evaluates half the batches; both return the single-process report."""
    from safetensors.torch import save_file

    model.save_pretrained(tmp_path / "model")
    save_file(
        {
            "pixel_values": torch.stack([d["pixel_values"] for d in data]).contiguous(),
            "labels": torch.tensor([d["labels"] for d in data]),
        },
        str(tmp_path / "data.safetensors"),
    )
    script = tmp_path / "shard_eval.py"
    script.write_text(SHARD_SCRIPT.replace("**KWARGS", "**" + repr(SHARD_KWARGS)))
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0 evaluated batches [0, 2]" in proc.stdout and "rank 1 evaluated batches [1, 3]" in proc.stdout
    rank0 = RobustnessReport.load(tmp_path / "report_0.json")
    rank1 = RobustnessReport.load(tmp_path / "report_1.json")
    reloaded = VideoMAEMoeForVideoClassification.from_pretrained(tmp_path / "model").eval()
    reference = evaluate_robustness(reloaded, data, **SHARD_KWARGS)
    assert rank0 == rank1  # every process returns the same report
    assert rank0 == reference  # and it is the single-process report
    assert rank0.num_samples == NUM_SAMPLES


def test_timesformer_moe_cost_against_dense(tiny_timesformer_config):
    from hf_videomoe import TimesformerMoeForVideoClassification

    torch.manual_seed(0)
    tsf = TimesformerMoeForVideoClassification(tiny_timesformer_config(num_experts=4)).eval()
    data = [{"pixel_values": torch.rand(4, 3, 16, 16), "labels": i} for i in range(2)]
    report = evaluate_robustness(
        tsf, data, attacks=["fgsm"], batch_size=2, check_determinism=False, check_gradients=False, progress=False
    )
    assert report.model_type == "timesformer_moe" and report.input_shape == [4, 3, 16, 16]
    assert report.flops > 0 and report.dense_flops > 0 and report.dense_parameters < report.total_parameters
    assert set(report.routing_change) == {"fgsm"}


# ----------------------------------------------------------------------------------------------------------------------
# Cascade mode and the AutoAttack preset


CASCADE_ATTACKS = {
    "fgsm": {"name": "fgsm"},
    "pgd": {"name": "pgd", "steps": 3},
    "apgd-t": {"name": "apgd-t", "steps": 3},
    "square": {"name": "square", "steps": 30},
    "j-tlga": {"name": "j-tlga", "steps": 3},
}
# Small enough that some clips survive every attack (at 2/255 none does on this model), so the full and cascade modes
# must agree on clips that fall and on clips that stand.
CASCADE_EPS = 1 / 255


def test_cascade_mode_gives_the_full_worst_case_for_less_work(model, data):
    """Each attack runs only on the clips still standing: the same worst case, per clip, as running every attack on
    every clip; the per-attack accuracies are cumulative and never rise; fewer clips are attacked."""
    common = dict(
        attacks=CASCADE_ATTACKS,
        eps=CASCADE_EPS,
        seed=0,
        batch_size=4,
        return_per_sample=True,
        progress=False,
        compute_cost=False,
        check_gradients=False,
        check_determinism=False,
    )
    full = evaluate_robustness(model, data, **common)
    attacked = []
    cascade = evaluate_robustness(
        model,
        data,
        mode="cascade",
        **common,
        callback=lambda info: attacked.append({a: e["attacked"] for a, e in info["record"]["attacks"].items()}),
    )
    assert full.mode == "full" and cascade.mode == "cascade"
    assert 0 < full.worst_case_accuracy < full.clean_accuracy  # some clips fall, some stand: the match means something
    assert cascade.worst_case_accuracy == full.worst_case_accuracy
    assert cascade.per_sample["worst_case_correct"] == full.per_sample["worst_case_correct"]
    assert cascade.clean_accuracy == full.clean_accuracy
    cumulative = [cascade.robust_accuracy[a] for a in CASCADE_ATTACKS]
    assert cumulative == sorted(cumulative, reverse=True) and cumulative[-1] == cascade.worst_case_accuracy
    assert (
        cascade.robust_accuracy["fgsm"] == full.robust_accuracy["fgsm"]
    )  # the first attack sees every clean-correct clip
    total_attacked = sum(sum(batch.values()) for batch in attacked)
    assert total_attacked < len(CASCADE_ATTACKS) * NUM_SAMPLES * full.clean_accuracy
    # a clip an attack did not run on has prediction -1 for it
    assert -1 in cascade.per_sample["predictions"]["square"]
    assert cascade.checks["gradient_masking"].startswith("skipped: cascade")
    assert "cascade" in cascade.accuracy_table()
    assert RobustnessReport.from_json(cascade.to_json()).mode == "cascade"


def test_cascade_mode_refuses_what_it_cannot_compute(model, data):
    with pytest.raises(ValueError, match="mode must be"):
        evaluate_robustness(model, data, attacks=["fgsm"], mode="auto", progress=False)
    with pytest.raises(ValueError, match="cascade.*eps_sweep"):
        evaluate_robustness(model, data, attacks=["fgsm"], mode="cascade", eps_sweep=[4 / 255], progress=False)
    with pytest.raises(ValueError, match="check_steps in mode='cascade'.*exact_attacks"):
        evaluate_robustness(model, data, attacks=["pgd"], mode="cascade", check_steps=True, progress=False)
    # by default the steps check takes the first multi-step attack that runs on every sample, not a cascaded one
    report = evaluate_robustness(
        model,
        data,
        attacks={"pgd": {"name": "pgd", "steps": 2}, "apgd-ce": {"steps": 2}},
        mode="cascade",
        exact_attacks=["apgd-ce"],
        check_steps=True,
        check_steps_samples=4,
        progress=False,
        compute_cost=False,
    )
    assert set(report.steps_check) == {"apgd-ce"}
    with pytest.raises(ValueError, match="exact_attacks only applies"):
        evaluate_robustness(model, data, attacks=["pgd"], exact_attacks=["pgd"], progress=False)
    with pytest.raises(ValueError, match=r"exact_attacks \['apgd-ce'\] are not among"):
        evaluate_robustness(model, data, attacks=["pgd"], mode="cascade", exact_attacks=["apgd-ce"], progress=False)


def test_cascade_with_exact_attacks(model, data):
    """Exact attacks run on every clip with their own accuracy, diagnostics and steps check; the cascade starts from
    the clips they leave standing; the worst case is still the full mode's."""
    common = dict(
        attacks=CASCADE_ATTACKS,
        eps=CASCADE_EPS,
        seed=0,
        batch_size=4,
        return_per_sample=True,
        progress=False,
        compute_cost=False,
        check_gradients=False,
        check_determinism=False,
    )
    full = evaluate_robustness(model, data, **common)
    attacked = []
    hybrid = evaluate_robustness(
        model,
        data,
        mode="cascade",
        exact_attacks=["pgd", "j-tlga"],
        check_steps=True,
        check_steps_samples=4,
        **common,
        callback=lambda info: attacked.append(info["record"]["attacks"]["square"]["attacked"]),
    )
    assert 0 < full.worst_case_accuracy < full.robust_accuracy["pgd"]  # the cascade after PGD has clips to break
    assert hybrid.per_sample["worst_case_correct"] == full.per_sample["worst_case_correct"]
    for exact in ("pgd", "j-tlga"):
        assert hybrid.robust_accuracy[exact] == full.robust_accuracy[exact]
        assert hybrid.routing_change[exact] == full.routing_change[exact] and exact in hybrid.frozen_routing
        assert not hybrid.is_cumulative(exact)
    assert hybrid.is_cumulative("fgsm") and "fgsm" not in hybrid.routing_change
    assert set(hybrid.steps_check) == {"pgd"}
    # FGSM, the first cascaded attack, starts from the clips robust to both exact attacks
    both = [
        p == l and q == l
        for p, q, l in zip(
            full.per_sample["predictions"]["pgd"], full.per_sample["predictions"]["j-tlga"], full.per_sample["label"]
        )
    ]
    clean = [p == l for p, l in zip(full.per_sample["clean_prediction"], full.per_sample["label"])]
    assert hybrid.robust_accuracy["fgsm"] <= sum(a and c for a, c in zip(both, clean)) / NUM_SAMPLES
    assert "after FGSM" in hybrid.accuracy_table() and "after PGD" not in hybrid.accuracy_table()
    assert RobustnessReport.from_json(hybrid.to_json()).exact_attacks == ["pgd", "j-tlga"]


def test_autoattack_preset_expands_to_its_standard_settings():
    from hf_videomoe.evaluation import ATTACK_PRESETS
    from hf_videomoe.evaluation.attack_specs import resolve_attacks

    shared = {"eps": 4 / 255, "norm": "linf", "steps": 10, "step_size": None, "seed": 0}
    specs = resolve_attacks(["AutoAttack", "j-tlga"], shared=shared, extra={}, moe=True)
    assert [s.label for s in specs] == ["apgd-ce", "apgd-t", "square", "j-tlga"]
    settings = {s.label: s.settings() for s in specs}
    assert settings["apgd-ce"]["steps"] == 100 and settings["apgd-t"]["steps"] == 100  # the preset's, not `steps`
    assert settings["square"]["steps"] == 5000 and not specs[2].white_box
    assert settings["j-tlga"]["steps"] == 10
    assert all(s["eps"] == pytest.approx(4 / 255) for s in settings.values())
    assert set(ATTACK_PRESETS) == {"autoattack"}
