"""The seams of `hf_videomoe.training`: arguments know method names only, the trainer validates and builds the method,
and a method's loss runs on a `StepContext` without any trainer (data flows down, nothing calls back up)."""

import ast
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_videomoe import VideoMAEMoeForVideoClassification  # noqa: E402
from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments, AdversarialTrainingCallback  # noqa: E402
from hf_videomoe.training.adversarial import TrainingAttacks  # noqa: E402
from hf_videomoe.training.arguments import ADV_METHODS, MOE_ONLY_METHODS  # noqa: E402
from hf_videomoe.training.methods import METHODS, build_method  # noqa: E402
from hf_videomoe.training.phases import StepState  # noqa: E402
from hf_videomoe.training.step import StepContext  # noqa: E402

TRAINING = Path(__file__).resolve().parents[1] / "hf_videomoe" / "training"


def _local_imports(path: Path) -> set[str]:
    """Modules of `hf_videomoe.training` that ``path`` imports, wherever the import is (TYPE_CHECKING, functions)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            imported.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
    return imported


def test_argument_vocabulary_matches_the_method_registry():
    assert tuple(METHODS) == ADV_METHODS
    assert {name for name, method in METHODS.items() if method.requires_moe} == set(MOE_ONLY_METHODS)


def test_training_imports_flow_one_way():
    graph = {path.stem: _local_imports(path) for path in TRAINING.glob("*.py")}
    assert not graph["arguments"] & {"method", "methods", "trainer"} and not graph["argument_checks"]
    assert {name for name, imported in graph.items() if "trainer" in imported} <= {"__init__", "jtlat"}

    def reaches(start: str, target: str, seen=()) -> bool:
        return any(dep == target or (dep not in seen and reaches(dep, target, (*seen, dep))) for dep in graph[start])

    assert not [name for name in graph if name != "__init__" and reaches(name, name)]


def test_the_trainer_validates_adv_method_it_builds(tmp_path):
    with pytest.raises(ValueError, match="Unknown adv_method 'fgsm-at'"):
        build_method("fgsm-at")
    args = AdversarialTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    args.adv_method = "fgsm-at"  # after the arguments' own check
    with pytest.raises(ValueError, match="Unknown adv_method"):
        AdversarialTrainer(model=torch.nn.Linear(1, 1), args=args)


def test_a_method_loss_needs_only_a_step_context(tmp_path, tiny_videomae_config):
    torch.manual_seed(0)
    model = VideoMAEMoeForVideoClassification(tiny_videomae_config(num_experts=4))
    args = AdversarialTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, adv_steps=1)
    callback = AdversarialTrainingCallback("pgd-at")
    pixels, labels = torch.rand(2, 4, 3, 16, 16), torch.tensor([0, 1])
    step = StepContext(
        args=args,
        state=StepState(pixels, labels),
        attacks=TrainingAttacks(args, is_moe=True),
        is_moe=True,
        config=model.config,
        unwrap=lambda module: module,
        seed_parts=(0, 0, 0, 0),
        shares_clean_pass=False,
        callback=callback,
    )
    method = build_method("pgd-at")
    (phase,) = method.phases(args, global_step=0)
    loss = method.phase_loss(step, model, phase)
    assert loss.per_sample.shape == (2,) and torch.isfinite(loss.per_sample).all()
    assert {"adv_ce", "aux_loss", "expert_usage_entropy"} <= set(loss.terms)
    x_adv = step.state.adversarial["pgd"]
    assert not torch.equal(x_adv, pixels) and (x_adv - pixels).abs().max() <= args.adv_eps + 1e-6
    method.phase_loss(step, model, phase)  # a second phase of the micro-batch reuses the examples
    assert callback.adversarial_batches == 1 and step.state.main_attack == "pgd"
