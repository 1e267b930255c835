"""Defenses ordered by the worst case: PGD-AT and J-TLAT each beat training without adversarial examples, and
``load_best_model_at_end`` restores the weights of the best checkpoint.

The task (2 classes: a white square crossing a noisy grey clip left-to-right or right-to-left, 4 frames of 16 px) is
learnt by every method in 120 steps of a tiny VideoMAE-MoE. The ordering is judged on the worst case over {PGD, Square,
J-TLGA} at ε = 6/255 (the training budget), with the gradient-masking checks on: Square (gradient-free) next to the
white-box attacks, the input-gradient check, the doubled-steps check and the determinism check; none may raise a flag,
so a defense cannot win by hiding its gradients. Measured on 48 test clips: no AT 12.5 %, PGD-AT 69 %, J-TLAT 54 %.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_videomoe.evaluation import evaluate_robustness  # noqa: E402
from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments, JTLATTrainer  # noqa: E402

EPS = 6 / 255
WORST_CASE_ATTACKS = ["pgd", "square", "j-tlga"]
# 10 gradient steps for the white-box attacks; Square (gradient-free, one forward per query) gets 300 queries, enough
# to beat a white-box attack on a model that only hides its gradients.
ATTACK_SETTINGS = {"pgd": {}, "square": {"steps": 300}, "j-tlga": {}}


def make_args(output_dir, **overrides) -> AdversarialTrainingArguments:
    defaults = dict(
        output_dir=str(output_dir),
        adv_eps=EPS,
        adv_steps=2,
        max_steps=120,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        logging_steps=60,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return AdversarialTrainingArguments(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny_moe_model, motion_dataset):
    train, test = motion_dataset(64, seed=0), motion_dataset(48, seed=1)
    out = {}
    for method in ("none", "pgd-at", "j-tlat"):
        model = tiny_moe_model(num_labels=2)
        args = make_args(tmp_path_factory.mktemp(method), adv_method=method)
        trainer_cls = JTLATTrainer if method == "j-tlat" else AdversarialTrainer
        trainer_cls(model=model, args=args, train_dataset=train).train()
        out[method] = evaluate_robustness(
            model, test, ATTACK_SETTINGS, eps=EPS, steps=10, batch_size=48, diagnostics=False,
            compute_cost=False, check_determinism=True, check_gradients=True, check_steps=True,
            check_steps_samples=16, progress=False,
        )  # fmt: skip
    return out


def test_every_method_learns_the_task_and_no_evaluation_is_flagged(reports):
    for method, report in reports.items():
        assert report.clean_accuracy >= 0.9, (method, report.clean_accuracy)
        for check in ("gradient_masking", "gradients", "steps_monotonicity", "determinism"):
            assert report.checks.get(check) == "passed", (method, report.checks)  # ran, and passed
        assert not report.flag_names, (method, report.flag_names)
        assert report.worst_case_accuracy <= min(report.robust_accuracy.values()), method


def test_training_without_adversarial_examples_is_not_robust(reports):
    assert reports["none"].worst_case_accuracy <= 0.25, reports["none"].robust_accuracy


@pytest.mark.parametrize("method", ["pgd-at", "j-tlat"])
def test_adversarial_training_beats_no_adversarial_training_on_the_worst_case(reports, method):
    none, defended = reports["none"], reports[method]
    assert defended.worst_case_accuracy >= none.worst_case_accuracy + 0.25, (
        method, defended.robust_accuracy, none.robust_accuracy,
    )  # fmt: skip
    for attack in WORST_CASE_ATTACKS:  # not one attack where the defense is worse
        assert defended.robust_accuracy[attack] >= none.robust_accuracy[attack], (method, attack)


# ---------------------------------------------------------------------------------------- best checkpoint


def test_load_best_model_at_end_restores_the_best_checkpoints_weights(tmp_path, tiny_moe_model, motion_dataset):
    """Three evaluations (steps 2, 4, 6), a checkpoint at each; the worst-case metric is made best at the second
    (a callback sets the reported values, so the choice does not hinge on noise). After training the model holds
    exactly the step-4 checkpoint's weights, not the final ones."""
    forced = iter([0.25, 0.75, 0.5])

    class ForceMetric(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            assert "eval_worst_case_accuracy" in metrics  # the robust metrics are there when best is decided
            metrics["eval_worst_case_accuracy"] = next(forced)

    data = motion_dataset(32, seed=0)
    args = make_args(
        tmp_path, adv_method="pgd-at", adv_steps=1, max_steps=6, per_device_train_batch_size=8, eval_strategy="steps",
        eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="eval_worst_case_accuracy", eval_attacks=["pgd"], eval_attack_steps=1,
        eval_max_samples=8, save_total_limit=None,
    )  # fmt: skip
    model = tiny_moe_model(num_labels=2)
    trainer = AdversarialTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data.select(range(8)), callbacks=[ForceMetric()]
    )
    trainer.train()
    assert trainer.state.best_metric == pytest.approx(0.75)
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    best = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    last = load_file(str(tmp_path / "checkpoint-6" / "model.safetensors"))
    state = {name: value.detach() for name, value in model.state_dict().items()}
    assert set(best) <= set(state)
    differs_from_last = False
    for name, value in best.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
        differs_from_last |= not torch.equal(value, last[name])
    assert differs_from_last, "training did not move the weights between the best and the last checkpoint"
