"""Tests of `hf_videomoe.training`: arguments, every adversarial-training method, J-TLAT's parameter groups, robust
evaluation, checkpoint selection, resume, NaN guard, gradient accumulation, model card and Hub push.

Tiny models (VideoMAE-MoE 16 px, patch 8, 4 frames, hidden 32, 2 layers, 4 experts) and 16-64 clips keep the file
fast on two shared CPU cores; the two-process test lives in ``test_training_distributed.py``.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback, TrainingArguments, VideoMAEForVideoClassification  # noqa: E402

import hf_videomoe  # noqa: E402,F401
from hf_videomoe import VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.data import MOVING_SHAPES_CLASSES, make_moving_shapes  # noqa: E402
from hf_videomoe.evaluation import RobustnessReport, evaluate_robustness  # noqa: E402
from hf_videomoe.moe import SparseMoeBlock, moe_blocks, named_expert_parameters, named_router_parameters  # noqa: E402
from hf_videomoe.training import (  # noqa: E402
    AdversarialTrainer,
    AdversarialTrainingArguments,
    AdversarialTrainingCallback,
    JTLATTrainer,
)

METHODS = ("none", "pgd-at", "trades", "tlat", "advmoe", "j-tlat")
# Loss components each method logs (next to Trainer's `loss`).
LOGGED = {
    "none": {"loss_model", "clean_ce", "aux_loss", "expert_usage_entropy"},
    "pgd-at": {
        "loss_model",
        "adv_ce",
        "aux_loss",
        "expert_usage_entropy",
        "routing_change",
        "adv_accuracy",
        "clean_accuracy",
        "fgsm_accuracy",
    },
    "trades": {"loss_model", "clean_ce", "trades_kl", "adv_ce", "aux_loss", "routing_change"},
    "tlat": {"loss_model", "adv_ce", "lipschitz_model", "clean_ce", "aux_loss", "routing_change"},
    "advmoe": {"loss_router", "loss_expert", "adv_ce", "aux_loss", "routing_change"},
    "j-tlat": {
        "loss_router",
        "router_ce",
        "lipschitz_router",
        "router_balance",
        "loss_expert",
        "expert_ce",
        "lipschitz_expert",
        "loss_model",
        "adv_ce",
        "lipschitz_model",
        "clean_ce",
        "aux_loss",
        "expert_usage_entropy",
        "routing_change",
        "clean_accuracy",
        "adv_accuracy",
    },
}


@pytest.fixture(scope="module")
def shapes():
    """MovingShapes, easy, 4 frames of 16 px: 32 training clips (4 per class) and 16 test clips."""
    return make_moving_shapes(48, num_frames=4, image_size=16, difficulty="easy", seed=0, test_size=16)


def make_args(tmp_path, **overrides) -> AdversarialTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        adv_steps=1,
        max_steps=4,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return AdversarialTrainingArguments(**{**defaults, **overrides})


def make_trainer(model, args, train_dataset, **kwargs):
    cls = JTLATTrainer if args.adv_method in (None, "j-tlat") else AdversarialTrainer
    return cls(model=model, args=args, train_dataset=train_dataset, **kwargs)


def state_dict_copy(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def changed_parameters(before, model, atol=0.0):
    """Names whose value differs between ``before`` and ``model`` (a module or a state dict)."""
    after = model if isinstance(model, dict) else model.state_dict()
    return {name for name, value in after.items() if not torch.allclose(before[name], value, atol=atol, rtol=0)}


# ----------------------------------------------------------------------------------------------------------------------
# Arguments


def test_arguments_defaults():
    args = AdversarialTrainingArguments(output_dir="unused", report_to=[])
    assert args.adv_method is None  # the trainer's default: pgd-at / j-tlat
    assert args.adv_eps == pytest.approx(8 / 255)
    assert args.remove_unused_columns is False
    assert args.ddp_find_unused_parameters is True
    assert args.jtlat_steps == ["router", "expert", "model"]
    assert args.eval_attacks == []
    assert AdversarialTrainingArguments(output_dir="unused", report_to=[], jtlat_steps=["3", "1"]).jtlat_steps == [
        "router",
        "model",
    ]
    best = AdversarialTrainingArguments(
        output_dir="unused", report_to=[], eval_attacks=["pgd"], metric_for_best_model="eval_worst_case_accuracy"
    )
    assert best.greater_is_better is True


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(adv_method="fgsm-at"), "adv_method"),
        (dict(adv_eps=1.5), "adv_eps"),
        (dict(adv_eps=-1 / 255), "adv_eps"),
        (dict(lipschitz_weight=-0.1), "lipschitz_weight"),
        (dict(guidance_weight=-1.0), "guidance_weight"),
        (dict(router_weight=float("nan")), "router_weight"),
        (dict(trades_beta=-1.0), "trades_beta"),
        (dict(temporal_momentum=1.5), "temporal_momentum"),
        (dict(adv_steps=-1), "adv_steps"),
        (dict(adv_step_size=0.0), "adv_step_size"),
        (dict(adv_norm="l1"), "adv_norm"),
        (dict(temporal_step="fast"), "temporal_step"),
        (dict(jtlat_steps=["router", "decoder"]), "J-TLAT step"),
        (dict(jtlat_steps=[]), "jtlat_steps"),
        (dict(jtlat_router_attack="pgd"), "jtlat_router_attack"),
        (dict(eval_attacks=["pgd", "nope"]), "nope"),
        (dict(adv_attack="pgdd"), "adv_attack"),
        (dict(eval_attacks=["pgd"], metric_for_best_model="eval_robust_accuracy_j-tlga"), "j-tlga"),
        (dict(metric_for_best_model="eval_worst_case_accuracy"), "eval_attacks"),
        (dict(adv_method="j-tlat", ddp_find_unused_parameters=False), "ddp_find_unused_parameters"),
        (dict(eval_max_samples=0), "eval_max_samples"),
        (dict(jtlat_router_balance_weight=-0.1), "jtlat_router_balance_weight"),
        (dict(jtlat_router_target="argmax"), "jtlat_router_target"),
        (dict(jtlat_router_balance="entropy"), "jtlat_router_balance"),
        (dict(jtlat_router_balance_temperature=0.0), "jtlat_router_balance_temperature"),
    ],
)
def test_arguments_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        AdversarialTrainingArguments(output_dir="unused", report_to=[], **overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs fail before training


def test_bad_inputs_raise_before_training(tmp_path, tiny_moe_model, tiny_videomae_config, shapes):
    dense = VideoMAEForVideoClassification(tiny_videomae_config(dense=True))
    train = shapes["train"]
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        JTLATTrainer(model=dense, args=make_args(tmp_path), train_dataset=train)
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        AdversarialTrainer(model=dense, args=make_args(tmp_path, adv_method="advmoe"), train_dataset=train)
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        AdversarialTrainer(model=dense, args=make_args(tmp_path, adv_attack="tla-r"), train_dataset=train)
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        AdversarialTrainer(model=dense, args=make_args(tmp_path, eval_attacks=["j-tlga"]), train_dataset=train)
    with pytest.raises(ValueError, match="JTLATTrainer"):
        AdversarialTrainer(model=tiny_moe_model(), args=make_args(tmp_path, adv_method="j-tlat"), train_dataset=train)
    with pytest.raises(ValueError, match="J-TLAT only"):
        JTLATTrainer(model=tiny_moe_model(), args=make_args(tmp_path, adv_method="pgd-at"), train_dataset=train)
    with pytest.raises(ValueError, match="jtlat_top_k"):
        JTLATTrainer(model=tiny_moe_model(), args=make_args(tmp_path, jtlat_top_k=5), train_dataset=train)
    with pytest.raises(TypeError, match="AdversarialTrainingArguments"):
        AdversarialTrainer(model=tiny_moe_model(), args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))
    with pytest.raises(ValueError, match="compute_loss_func"):
        AdversarialTrainer(model=tiny_moe_model(), args=make_args(tmp_path), compute_loss_func=lambda *a, **k: 0.0)
    unlabelled = Dataset.from_dict({"pixel_values": torch.rand(4, 4, 3, 16, 16).numpy()}).with_format("torch")
    with pytest.raises(ValueError, match="no labels"):
        JTLATTrainer(model=tiny_moe_model(), args=make_args(tmp_path), train_dataset=unlabelled)
    with pytest.raises(ValueError, match="no labels"):
        AdversarialTrainer(
            model=tiny_moe_model(), args=make_args(tmp_path, eval_attacks=["pgd"]), eval_dataset=unlabelled
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------------------------------------------------
# Every method trains and reduces its own loss


@pytest.mark.parametrize("method", METHODS)
def test_method_reduces_its_loss_and_logs_components(tmp_path, tiny_moe_model, shapes, method):
    train = shapes["train"].select(range(16))
    args = make_args(tmp_path, adv_method=method, max_steps=12, per_device_train_batch_size=16)
    trainer = make_trainer(tiny_moe_model(), args, train)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 12
    keys = set().union(*(entry.keys() for entry in logs))
    assert LOGGED[method] <= keys, LOGGED[method] - keys
    # AdvMoE alternates expert (even) and router (odd) steps: compare each of them with itself.
    tracked = ["loss_expert", "loss_router"] if method == "advmoe" else ["loss"]
    if method == "j-tlat":
        tracked += ["loss_router", "loss_expert", "loss_model"]
    for key in tracked:
        values = [entry[key] for entry in logs if key in entry]
        assert all(math.isfinite(v) for v in values)
        assert sum(values[-2:]) / 2 < sum(values[:2]) / 2, (key, values)
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdversarialTrainingCallback))
    expected = {"advmoe": {"expert": 6, "router": 6}, "j-tlat": {"router": 12, "expert": 12, "model": 12}}
    assert callback.phase_updates == expected.get(method, {"model": 12})


@pytest.mark.parametrize("method", ["tlat", "j-tlat"])
def test_full_gradient_lipschitz_terms(tmp_path, tiny_moe_model, shapes, method):
    # lipschitz_detach_clean=False back-propagates through the clean side too (one pass on [x, x_adv]).
    args = make_args(tmp_path, adv_method=method, max_steps=2, lipschitz_detach_clean=False,
                     jtlat_reuse_adversarial=True)  # fmt: skip
    trainer = make_trainer(tiny_moe_model(), args, shapes["train"])
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["lipschitz_model"]) for entry in logs)


def test_jtlat_on_timesformer_moe(tmp_path, tiny_timesformer_config, shapes):
    from hf_videomoe import TimesformerMoeForVideoClassification

    torch.manual_seed(0)
    model = TimesformerMoeForVideoClassification(tiny_timesformer_config(num_experts=4, router_granularity="frame"))
    trainer = JTLATTrainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=shapes["train"])
    trainer.train()
    keys = set().union(*(entry.keys() for entry in trainer.state.log_history))
    assert LOGGED["j-tlat"] <= keys


def test_dense_model_pgd_at(tmp_path, tiny_videomae_config, shapes):
    torch.manual_seed(0)
    dense = VideoMAEForVideoClassification(tiny_videomae_config(dense=True))
    trainer = AdversarialTrainer(model=dense, args=make_args(tmp_path, max_steps=2), train_dataset=shapes["train"])
    trainer.train()
    keys = set().union(*(entry.keys() for entry in trainer.state.log_history))
    assert {"adv_ce", "adv_accuracy"} <= keys and "routing_change" not in keys


def test_catastrophic_overfitting_rule():
    from hf_videomoe.training.checks import catastrophic_overfitting

    healthy = [(0.30, 0.40), (0.35, 0.45), (0.38, 0.50)]
    collapsed = [(0.30, 0.40), (0.35, 0.45), (0.05, 0.80)]  # PGD accuracy falls while FGSM accuracy soars
    assert not catastrophic_overfitting(healthy)
    assert catastrophic_overfitting(collapsed)
    assert not catastrophic_overfitting([(0.30, 0.40), (0.35, 0.45), (0.05, 0.20)])  # both fall: just a bad step
    assert not catastrophic_overfitting(collapsed[-1:])

    from types import SimpleNamespace

    from hf_videomoe.training.reporting import RobustReportingMixin

    trainer = SimpleNamespace(state=SimpleNamespace(global_step=30))  # what the log hook reads
    for adv, fgsm in collapsed:
        logs = {"loss": 1.0, "adv_accuracy": adv, "fgsm_accuracy": fgsm}
        RobustReportingMixin._check_catastrophic_overfitting(trainer, logs)
    assert logs["catastrophic_overfitting"] == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# Parameter groups: J-TLAT step 1 changes only routers, step 2 only experts; AdvMoE alternates


def _names(pairs):
    return {name for name, _ in pairs}


@pytest.mark.parametrize("step, group", [("router", "router"), ("expert", "expert")])
def test_jtlat_single_step_changes_only_its_group(tmp_path, tiny_moe_model, shapes, step, group):
    model = tiny_moe_model()
    router, experts = _names(named_router_parameters(model)), _names(named_expert_parameters(model))
    before = state_dict_copy(model)
    args = make_args(tmp_path, jtlat_steps=[step], max_steps=2, weight_decay=0.01)
    JTLATTrainer(model=model, args=args, train_dataset=shapes["train"]).train()
    changed = changed_parameters(before, model)
    assert changed == (router if group == "router" else experts)


class _UnfusedJTLAT(JTLATTrainer):
    fuses_router_and_model_steps = False


@pytest.mark.parametrize("granularity", ["token", "model"])
def test_reuse_fuses_router_and_model_steps_without_changing_the_update(tmp_path, tiny_moe_model, shapes, granularity):
    # With one adversarial batch and top-1 routing, steps 1 and 3 share a pass; the update must equal two passes
    # (also with model-level routing, where only the first MoE layer has a router).
    finals = []
    for cls in (JTLATTrainer, _UnfusedJTLAT):
        model = tiny_moe_model(router_granularity=granularity)
        args = make_args(tmp_path, jtlat_reuse_adversarial=True, max_steps=2, optim="sgd", learning_rate=0.5,
                         output_dir=str(tmp_path / cls.__name__))  # fmt: skip
        trainer = cls(model=model, args=args, train_dataset=shapes["train"])
        assert [p.name for p in trainer.training_phases()] == (
            ["router+model", "expert"] if cls is JTLATTrainer else ["router", "expert", "model"]
        )
        trainer.train()
        finals.append((model.state_dict(), trainer.state.log_history))
    for name in finals[0][0]:
        torch.testing.assert_close(finals[1][0][name], finals[0][0][name], atol=1e-5, rtol=1e-4, msg=name)
    for fused, separate in zip(*(history for _, history in finals)):
        for key in ("loss_router", "loss_model", "loss_expert"):
            if key in separate:
                assert fused[key] == pytest.approx(separate[key], rel=1e-4, abs=1e-6), key


class _GradientRecorder(JTLATTrainer):
    """Records, per J-TLAT step, which parameters its backward pass(es) touched."""

    def train_phase(self, model, phase, final):
        params = dict(self.model.named_parameters())
        before = {n: (p.grad.clone() if p.grad is not None else None) for n, p in params.items()}
        loss = super().train_phase(model, phase, final)
        touched = set()
        for name, param in params.items():
            if param.grad is None:
                continue
            previous = before[name]
            delta = param.grad if previous is None else param.grad - previous
            if delta.abs().max() > 0:
                touched.add(name)
        self.touched.setdefault(phase.name, set()).update(touched)
        return loss


def test_jtlat_steps_back_propagate_into_their_own_groups(tmp_path, tiny_moe_model, shapes):
    model = tiny_moe_model()
    router, experts = _names(named_router_parameters(model)), _names(named_expert_parameters(model))
    trainer = _GradientRecorder(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=shapes["train"])
    trainer.touched = {}
    trainer.train()
    assert trainer.touched["router"] and trainer.touched["router"] <= router
    assert trainer.touched["expert"] and trainer.touched["expert"] <= experts
    assert trainer.touched["model"] - router - experts  # step 3 trains the whole model
    assert not any(p.requires_grad is False for p in model.parameters())  # flags restored


class _PhaseStarts(JTLATTrainer):
    """Records, at the start of each J-TLAT step, the weights and what the step finds cached from earlier steps."""

    def train_phase(self, model, phase, final):
        step = self.step_state
        self.starts.append({"phase": phase.name, "weights": state_dict_copy(self.model),
                            "clean_cached": step.clean is not None, "router_logits_cached": bool(step.adv_router_logits),
                            "examples_cached": set(step.adversarial)})  # fmt: skip
        return super().train_phase(model, phase, final)


def _train_recording_phase_starts(tmp_path, model, shapes, **overrides):
    args = make_args(tmp_path, max_steps=1, **overrides)
    trainer = _PhaseStarts(model=model, args=args, train_dataset=shapes["train"])
    trainer.starts = []
    trainer.train()
    assert [start["phase"] for start in trainer.starts] == ["router", "expert", "model"]
    return trainer


def test_jtlat_sequential_update_runs_each_step_on_the_weights_the_previous_one_left(tmp_path, tiny_moe_model, shapes):
    """``jtlat_update="sequential"``: step 2 starts from the routers step 1 updated (experts untouched), step 3 from
    the experts step 2 updated (routers untouched by step 2), and neither reuses clean outputs or router logits of
    the old weights; with ``"summed"`` every step starts from the same weights and shares them."""
    model = tiny_moe_model()
    router, experts = _names(named_router_parameters(model)), _names(named_expert_parameters(model))
    finals = {}
    for update in ("summed", "sequential"):
        trainer = _train_recording_phase_starts(tmp_path / update, tiny_moe_model(), shapes, jtlat_update=update,
                                                weight_decay=0.01)  # fmt: skip
        at_router, at_expert, at_model = trainer.starts
        if update == "summed":
            assert not changed_parameters(at_router["weights"], at_expert["weights"])
            assert not changed_parameters(at_router["weights"], at_model["weights"])
            assert at_expert["clean_cached"] and at_expert["router_logits_cached"]
        else:
            assert changed_parameters(at_router["weights"], at_expert["weights"]) == router
            assert changed_parameters(at_expert["weights"], at_model["weights"]) == experts
            assert not (at_expert["clean_cached"] or at_expert["router_logits_cached"] or at_model["clean_cached"])
            assert at_expert["examples_cached"] == {"tlga-r"}  # step 2 trains on step 1's x_r, as in the paper
            # two updates per step (their own and step 3's) for routers and experts, one for the rest
            steps = {name: int(trainer.optimizer.state[p]["step"]) for name, p in trainer.model.named_parameters()}
            assert {steps[name] for name in router | experts} == {2} and set(steps.values()) == {1, 2}
            assert {"grad_norm_router", "grad_norm_expert"} <= set(trainer.state.log_history[0])
        finals[update] = trainer.starts[-1]["weights"]
        assert trainer.training_recipe()["jtlat_update"] == update
    assert changed_parameters(finals["summed"], finals["sequential"])


def test_jtlat_sequential_update_clips_each_step_and_regenerates_reused_examples(tmp_path, tiny_moe_model, shapes):
    """Each early update is clipped to ``max_grad_norm`` on its own group (plain SGD: the update is lr × the clipped
    gradient); with one adversarial batch for all steps, step 3 attacks the updated weights anew."""
    model = tiny_moe_model()
    router = _names(named_router_parameters(model))
    trainer = _train_recording_phase_starts(
        tmp_path,
        model,
        shapes,
        jtlat_update="sequential",
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=1e-3,
        jtlat_reuse_adversarial=True,
    )
    at_router, at_expert, at_model = trainer.starts
    step_norm = torch.stack([(at_expert["weights"][n] - at_router["weights"][n]).norm() for n in router]).norm()
    assert step_norm.item() == pytest.approx(1e-3, rel=1e-3)
    assert trainer.state.log_history[0]["grad_norm_router"] > 1e-3  # the clip was active
    assert at_expert["examples_cached"] == {"j-tlga"} and not at_model["examples_cached"]


def test_jtlat_sequential_update_refuses_what_it_cannot_do(tmp_path, tiny_moe_model, shapes):
    with pytest.raises(ValueError, match="jtlat_update must be one of"):
        make_args(tmp_path, jtlat_update="parallel")
    refused = [
        (dict(gradient_accumulation_steps=2), {}, "gradient_accumulation_steps=1"),
        (dict(optim="schedule_free_adamw"), {}, "supports optim in"),
        ({}, dict(optimizer_cls_and_kwargs=(torch.optim.Adamax, {"lr": 1e-3})), "supports the custom optimizers"),
    ]
    for overrides, trainer_kwargs, message in refused:
        args = make_args(tmp_path, jtlat_update="sequential", **overrides)
        with pytest.raises(ValueError, match=message):
            JTLATTrainer(model=tiny_moe_model(), args=args, train_dataset=shapes["train"], **trainer_kwargs)
    # one adversarial batch for all steps is allowed, but steps 1 and 3 no longer share a pass (they see different
    # weights)
    args = make_args(tmp_path, jtlat_update="sequential", jtlat_reuse_adversarial=True)
    trainer = JTLATTrainer(model=tiny_moe_model(), args=args, train_dataset=shapes["train"])
    assert [phase.name for phase in trainer.training_phases()] == ["router", "expert", "model"]


def test_advmoe_alternates_expert_and_router_updates(tmp_path, tiny_moe_model, shapes):
    model = tiny_moe_model()
    router = _names(named_router_parameters(model))
    everything = set(state_dict_copy(model))
    before = state_dict_copy(model)
    args = make_args(tmp_path, adv_method="advmoe", max_steps=1)
    AdversarialTrainer(model=model, args=args, train_dataset=shapes["train"]).train()
    first = changed_parameters(before, model)  # step 0: every non-router parameter (that got a gradient)
    assert first and not (first & router)
    assert {name for name in everything - router if "experts" in name} <= first
    before = state_dict_copy(model)
    args = make_args(tmp_path, adv_method="advmoe", max_steps=2, output_dir=str(tmp_path / "second"))
    AdversarialTrainer(model=model, args=args, train_dataset=shapes["train"]).train()  # steps 0 (experts), 1 (routers)
    assert router <= changed_parameters(before, model)


# ----------------------------------------------------------------------------------------------------------------------
# Robustness: J-TLAT beats clean training under PGD


def _pgd_accuracy(model, dataset):
    report = evaluate_robustness(
        model, dataset, ["pgd"], eps=8 / 255, steps=10, batch_size=32, diagnostics=False, compute_cost=False,
        check_determinism=False, check_gradients=False, progress=False,
    )  # fmt: skip
    return report.clean_accuracy, report.robust_accuracy["pgd"]


def test_jtlat_is_more_robust_than_clean_training_on_a_motion_task(tmp_path, tiny_moe_model, motion_dataset):
    train, test = motion_dataset(64, seed=0), motion_dataset(64, seed=1)
    results = {}
    for method in ("none", "j-tlat"):
        model = tiny_moe_model(num_labels=2)
        args = make_args(
            tmp_path, adv_method=method, adv_steps=2, max_steps=100, per_device_train_batch_size=16, logging_steps=50,
            output_dir=str(tmp_path / method),
        )  # fmt: skip
        make_trainer(model, args, train).train()
        results[method] = _pgd_accuracy(model, test)
    clean_none, robust_none = results["none"]
    clean_jtlat, robust_jtlat = results["j-tlat"]
    assert clean_none >= 0.8 and clean_jtlat >= 0.8, results  # both learn the task...
    assert robust_none <= 0.1, results  # ...clean training is fooled...
    assert robust_jtlat >= robust_none + 0.2, results  # ...J-TLAT much less


@pytest.mark.slow
def test_jtlat_is_more_robust_than_clean_training_on_moving_shapes(tmp_path, tiny_videomae_config):
    # The grow / shrink pair of MovingShapes (time reversals of each other), 4 frames of 16 px, patch 4: clean training
    # learns it in a few seconds on 2 cores and PGD then fools it on a third of the clips; J-TLAT with the same budget
    # keeps most of them.
    data = make_moving_shapes(1088, num_frames=4, image_size=16, difficulty="easy", seed=0)
    pair = {MOVING_SHAPES_CLASSES.index("grow"), MOVING_SHAPES_CLASSES.index("shrink")}
    train, test = (data[split].filter(lambda clip: int(clip["labels"]) in pair) for split in ("train", "test"))
    results = {}
    for method in ("none", "j-tlat"):
        torch.manual_seed(0)
        config = tiny_videomae_config(num_experts=4, patch_size=4, image_mean=[0.5] * 3, image_std=[0.25] * 3)
        model = VideoMAEMoeForVideoClassification(config)
        args = make_args(
            tmp_path, adv_method=method, adv_steps=2, num_train_epochs=25, max_steps=-1, learning_rate=2e-3,
            warmup_steps=0.1, per_device_train_batch_size=16, logging_steps=100, output_dir=str(tmp_path / method),
        )  # fmt: skip
        make_trainer(model, args, train).train()
        results[method] = _pgd_accuracy(model, test)
    assert results["none"][0] >= 0.8 and results["j-tlat"][0] >= 0.8, results
    assert results["j-tlat"][1] >= results["none"][1] + 0.1, results
    # ... and without collapsing its routers onto one expert (the step-1 balance term; RESULTS.md §2).
    with torch.no_grad():
        pixels = torch.stack([torch.as_tensor(clip) for clip in test["pixel_values"]])
        router_logits = model.eval()(pixel_values=pixels, output_router_logits=True).router_logits
    for layer, logits in enumerate(router_logits):
        share = logits.argmax(-1).flatten().bincount(minlength=4).max().item() / logits[..., 0].numel()
        assert share < 0.95, f"MoE layer {layer} sends {share:.0%} of its tokens to one expert"


def test_jtlat_soft_router_target(tmp_path, tiny_moe_model, shapes):
    """``jtlat_router_target="soft"``: step 1 matches the clean router probabilities instead of the clean top-1. On
    the same seeded first step the two targets give different router CEs and different router updates."""
    first_ce, routers = {}, {}
    for target in ("hard", "soft"):
        model = tiny_moe_model()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if ".router." in n}
        args = make_args(tmp_path / target, jtlat_router_target=target, jtlat_steps=["router"], max_steps=1)
        trainer = make_trainer(model, args, shapes["train"])
        trainer.train()
        first_ce[target] = next(entry["router_ce"] for entry in trainer.state.log_history if "router_ce" in entry)
        routers[target] = {n: p.detach().clone() for n, p in model.named_parameters() if n in before}
        assert any(not torch.equal(p, before[n]) for n, p in routers[target].items())
    assert first_ce["soft"] != pytest.approx(first_ce["hard"], rel=1e-4)
    assert any(not torch.equal(routers["soft"][n], routers["hard"][n]) for n in routers["hard"])


def test_jtlat_step1_balance_term(tmp_path, tiny_moe_model, shapes):
    """Step 1 logs ``router_balance``, the chosen balance term of the adversarial router logits (1 = balanced, 4 =
    collapsed): the Switch loss and the sharpened one are different terms on the same (seeded) step."""
    logged = {}
    for balance in ("switch", "sharp"):
        args = make_args(
            tmp_path / balance,
            adv_method="j-tlat",
            jtlat_router_balance=balance,
            jtlat_steps=["router"],
            max_steps=1,
            logging_steps=1,
        )
        trainer = make_trainer(tiny_moe_model(), args, shapes["train"])
        trainer.train()
        assert trainer.training_recipe()["jtlat_router_balance"] == balance
        logged[balance] = [entry["router_balance"] for entry in trainer.state.log_history if "router_balance" in entry]
        assert logged[balance] and 1.0 - 1e-4 <= logged[balance][0] <= 4.0 + 1e-4
    assert logged["switch"][0] != logged["sharp"][0]


# ----------------------------------------------------------------------------------------------------------------------
# Robust evaluation and checkpoint selection, model card


def test_robust_evaluation_selects_best_checkpoint_and_writes_card(tmp_path, tiny_moe_model, shapes):
    args = make_args(
        tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        eval_attacks=["pgd", "j-tlga"], eval_attack_steps=2, eval_max_samples=8, load_best_model_at_end=True,
        metric_for_best_model="eval_worst_case_accuracy",
    )  # fmt: skip
    seen = []

    class Spy(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append(dict(metrics))

    trainer = AdversarialTrainer(
        model=tiny_moe_model(), args=args, train_dataset=shapes["train"], eval_dataset=shapes["test"], callbacks=[Spy()]
    )
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evals) == 2
    for entry in evals + seen:
        for key in ("eval_clean_accuracy", "eval_robust_accuracy_pgd", "eval_robust_accuracy_j-tlga",
                    "eval_worst_case_accuracy", "eval_routing_change_pgd"):  # fmt: skip
            assert key in entry, key
        assert entry["eval_worst_case_accuracy"] <= min(entry["eval_robust_accuracy_pgd"], entry["eval_clean_accuracy"])
    best = max(entry["eval_worst_case_accuracy"] for entry in evals)
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.state.best_model_checkpoint is not None
    assert isinstance(trainer.robustness_report, RobustnessReport)
    assert trainer.robustness_report.num_samples == 8

    # Evaluating on a dict of datasets prefixes every metric with the dataset name.
    metrics = trainer.evaluate({"shapes": shapes["test"]})
    assert "eval_shapes_robust_accuracy_pgd" in metrics and "eval_shapes_worst_case_accuracy" in metrics

    from hf_videomoe.hub import metrics_from_model_card

    trainer.create_model_card(model_name="tiny-robust")
    card_metrics = metrics_from_model_card(tmp_path / "out" / "README.md")
    report = RobustnessReport.load(tmp_path / "out" / "report.json")
    assert report.worst_case_accuracy == trainer.robustness_report.worst_case_accuracy
    assert card_metrics  # model-index metrics parsed back from the card
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "adversarial-training" in readme and "PGD-AT" in readme


@pytest.mark.slow
def test_push_to_hub_uploads_robust_checkpoint(tmp_path, tiny_moe_model, shapes, loopback_hub):
    args = make_args(tmp_path, max_steps=1, eval_attacks=["pgd"], eval_attack_steps=1, eval_max_samples=8)
    trainer = AdversarialTrainer(
        model=tiny_moe_model(), args=args, train_dataset=shapes["train"], eval_dataset=shapes["test"]
    )
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(repo_id="user/tiny-robust", endpoint=loopback_hub.url, token="test", plots=False)
    files = set(loopback_hub.repos["user/tiny-robust"].files)
    assert {"README.md", "config.json", "model.safetensors", "report.json"} <= files


# ----------------------------------------------------------------------------------------------------------------------
# Resume, NaN guard, gradient accumulation


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("update", ["summed", "sequential"])
def test_interrupted_jtlat_run_resumes_to_identical_weights(tmp_path, tiny_moe_model, shapes, update):
    train = shapes["train"].select(range(24))  # 3 steps per epoch: the resume point is mid-epoch

    def run(output_dir, stop_at=None, resume=None):
        args = make_args(tmp_path, output_dir=str(output_dir), max_steps=6, save_strategy="steps", save_steps=2,
                         adv_steps=1, data_seed=0, jtlat_update=update)  # fmt: skip
        model = tiny_moe_model(seed=1 if resume else 0)  # a resumed run must not depend on the fresh initialisation
        callbacks = [_StopAt(stop_at)] if stop_at else []
        trainer = JTLATTrainer(model=model, args=args, train_dataset=train, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    interrupted = run(tmp_path / "interrupted", stop_at=4)
    assert interrupted.state.global_step == 4
    assert (tmp_path / "interrupted" / "checkpoint-4").is_dir()
    resumed = run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-4"))
    assert resumed.state.global_step == 6
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
    state = lambda t: next(cb for cb in t.callback_handler.callbacks if isinstance(cb, AdversarialTrainingCallback))  # noqa: E731
    assert state(resumed).phase_updates == state(full).phase_updates == {"router": 6, "expert": 6, "model": 6}


def test_nan_stops_training_naming_the_component_and_keeps_last_checkpoint(tmp_path, tiny_moe_model, shapes):
    model = tiny_moe_model()
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    trainer = JTLATTrainer(model=model, args=args, train_dataset=shapes["train"])

    def poison(block, inputs, output):
        # NaN from the third optimizer step on, only while experts are forced, i.e. in J-TLAT step 2.
        if block.forced_expert is not None and trainer.state.global_step >= 2:
            return output[0] * float("nan"), output[1]
        return output

    for block in moe_blocks(model):
        block.register_forward_hook(poison)
    with pytest.raises(FloatingPointError, match=r"J-TLAT step 2 \(expert\) loss is NaN at step 3") as err:
        trainer.train()
    assert "checkpoint-2" in str(err.value) and "expert_ce" in str(err.value)
    checkpoints = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-2"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step never updated the weights
    assert isinstance(moe_blocks(model)[0], SparseMoeBlock)


@pytest.mark.parametrize("method, extra", [("j-tlat", {}), ("j-tlat", {"jtlat_reuse_adversarial": True}),
                                           ("trades", {})])  # fmt: skip
def test_gradient_accumulation_matches_a_full_batch(tmp_path, tiny_moe_model, shapes, method, extra):
    # ε = 0 makes the adversarial examples deterministic (the clean clips), and without the (batch-level)
    # load-balancing losses (the model's aux loss and J-TLAT's step-1 balance term) the objective is a per-clip sum: 2 micro-batches of 4 must equal one batch of 8. Plain SGD
    # (Adam would turn float rounding in near-zero gradients into full-size updates).
    train = shapes["train"].select(range(16))
    finals = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model = tiny_moe_model(router_aux_loss_coef=0.0, router_z_loss_coef=0.0)
        args = make_args(
            tmp_path, adv_method=method, adv_eps=0.0, max_steps=2, per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, output_dir=str(tmp_path / f"ga{accumulation}"), optim="sgd",
            learning_rate=0.5, jtlat_router_balance_weight=0.0, **extra,
        )  # fmt: skip
        make_trainer(model, args, train).train()
        finals.append(model.state_dict())
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "step, own, others",
    [
        ("router", "router_lipschitz_weight", ("lipschitz_weight", "expert_lipschitz_weight")),
        ("expert", "expert_lipschitz_weight", ("lipschitz_weight", "router_lipschitz_weight")),
        ("model", "lipschitz_weight", ("expert_lipschitz_weight", "router_lipschitz_weight")),
    ],
)
def test_jtlat_each_lipschitz_weight_reaches_its_own_step(tmp_path, tiny_moe_model, shapes, step, own, others):
    """λ_R weighs step 1's router ratio, λ_E step 2's expert ratio, λ_F step 3's model ratio, and no other step's.
    The training attacks are PGD (no λ in them), so only the loss can tell the settings apart."""
    loss_key = {"router": "loss_router", "expert": "loss_expert", "model": "loss_model"}[step]
    attack = {"jtlat_router_attack": "pgd-r", "jtlat_model_attack": "pgd"}

    runs = []

    def first_loss(**weights):
        runs.append(weights)
        args = make_args(
            tmp_path / str(len(runs)), adv_method="j-tlat", jtlat_steps=[step], max_steps=1, **attack, **weights
        )
        trainer = make_trainer(tiny_moe_model(), args, shapes["train"])
        trainer.train()
        return next(entry[loss_key] for entry in trainer.state.log_history if loss_key in entry)

    base = first_loss(**{own: 0.0})
    assert first_loss(**{own: 1.0}) > base + 1e-6
    assert first_loss(**{own: 0.0, **{name: 1.0 for name in others}}) == pytest.approx(base, rel=1e-6)


def test_training_attacks_get_the_lambda_of_their_component(tmp_path, tiny_moe_model, shapes):
    args = make_args(
        tmp_path, adv_method="j-tlat", lipschitz_weight=0.1, expert_lipschitz_weight=0.2, router_lipschitz_weight=0.3
    )
    trainer = make_trainer(tiny_moe_model(), args, shapes["train"])
    kwargs = {
        name: trainer.attack_kwargs(name, eps=0.01, steps=1, step_size=None)
        for name in ("tlga-r", "tla-e", "tla-m", "j-tlga", "pgd")
    }
    assert kwargs["tlga-r"]["lipschitz_weight"] == 0.3
    assert kwargs["tla-e"]["lipschitz_weight"] == 0.2
    assert kwargs["tla-m"]["lipschitz_weight"] == 0.1
    assert kwargs["j-tlga"]["lipschitz_weight"] == 0.1 and kwargs["j-tlga"]["router_lipschitz_weight"] == 0.3
    assert kwargs["j-tlga"]["temporal_step"] == "normalized"
    assert "lipschitz_weight" not in kwargs["pgd"] and "temporal_step" not in kwargs["pgd"]


def test_jtlat_expert_step_on_tla_e_examples(tmp_path, tiny_moe_model, shapes):
    """``jtlat_expert_attack="tla-e"``: step 2 trains on TLA-E examples (aimed at each clip's clean top-1 path), with
    the expert λ; by default it reuses step 1's router-attack examples."""
    default = make_trainer(tiny_moe_model(), make_args(tmp_path / "default", adv_method="j-tlat"), shapes["train"])
    assert [p.attack for p in default.training_phases()] == ["tlga-r", "tlga-r", "j-tlga"]
    args = make_args(
        tmp_path / "tla-e",
        adv_method="j-tlat",
        jtlat_expert_attack="tla-e",
        jtlat_steps=["expert"],
        max_steps=1,
        expert_lipschitz_weight=0.5,
    )
    model = tiny_moe_model()
    experts_before = {n: p.detach().clone() for n, p in named_expert_parameters(model)}
    trainer = make_trainer(model, args, shapes["train"])
    assert [p.attack for p in trainer.training_phases()] == ["tla-e"]
    trainer.train()
    assert trainer.training_attacks.attack("tla-e").lipschitz_weight == 0.5
    assert any(not torch.equal(p, experts_before[n]) for n, p in named_expert_parameters(model))
    with pytest.raises(ValueError, match="jtlat_expert_attack"):
        make_args(tmp_path, adv_method="j-tlat", jtlat_expert_attack="pgd")
