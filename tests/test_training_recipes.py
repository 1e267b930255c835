"""The one training recipe the demo and the reproduction share (hf_videomoe/training_recipes.py)."""

import pytest

from hf_videomoe.demo import DemoSettings
from hf_videomoe.reproduction.recipes import Settings, training_arguments
from hf_videomoe.training import AdversarialTrainingArguments
from hf_videomoe.training_recipes import RECIPE_LOGGING_STEPS, recipe_training_arguments

# The fields the two pipelines may set apart (`TrainingArguments` turns `dataloader_pin_memory` off with `use_cpu`);
# every other field of their arguments must be the same.
CALLER_FIELDS = {"warmup_steps", "data_seed", "disable_tqdm", "use_cpu", "dataloader_pin_memory"}


def _phases(demo: DemoSettings, reproduction: Settings, output_dir: str):
    """(demo, reproduction) arguments of the dense, mixture and adversarial phase, at the same sizes."""
    adversarial = dict(adv_method="j-tlat", adv_eps=4 / 255, adv_steps=2)
    for epochs, lr, extra in ((20, 2e-3, {}), (30, 1e-3, {}), (5, 5e-4, adversarial)):
        yield (
            demo.training_arguments(output_dir, epochs, lr, 0, **extra),
            training_arguments(output_dir, reproduction, epochs=epochs, lr=lr, seed=0, **extra),
        )


def test_demo_and_reproduction_differ_only_where_they_say(tmp_path):
    demo, reproduction = DemoSettings(), Settings()
    assert demo.batch_size == reproduction.batch_size
    for demo_args, reproduction_args in _phases(demo, reproduction, str(tmp_path)):
        assert isinstance(demo_args, AdversarialTrainingArguments)
        a, b = demo_args.to_dict(), reproduction_args.to_dict()
        assert {key for key in a if a[key] != b[key]} <= CALLER_FIELDS
        assert (demo_args.warmup_steps, reproduction_args.warmup_steps) == (10, 5)
        assert demo_args.logging_steps == reproduction_args.logging_steps == RECIPE_LOGGING_STEPS


def test_recipe_values(tmp_path):
    """The values the demo's and the reproduction's recorded weights were trained with (changing one changes them)."""
    args = recipe_training_arguments(
        tmp_path, epochs=3, learning_rate=1e-3, batch_size=8, seed=4, warmup_steps=7, adv_method="pgd-at", adv_steps=1
    )
    assert (args.num_train_epochs, args.learning_rate, args.seed, args.warmup_steps) == (3, 1e-3, 4, 7)
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 8
    assert (args.weight_decay, args.lr_scheduler_type.value) == (0.05, "cosine")
    assert (args.eval_strategy.value, args.save_strategy.value, args.report_to) == ("no", "no", [])
    assert (args.adv_method, args.adv_steps) == ("pgd-at", 1)


def test_a_phase_cannot_override_the_recipe(tmp_path):
    with pytest.raises(TypeError, match="weight_decay"):
        recipe_training_arguments(
            tmp_path, epochs=1, learning_rate=1e-3, batch_size=8, seed=0, warmup_steps=5, weight_decay=0.0
        )


def test_names_stay_importable_from_the_demo():
    from hf_videomoe import demo, demo_seeds, demo_settings

    assert demo.DemoSettings is demo_settings.DemoSettings
    for name in ("DEMO_SEEDS_FILE", "RANGE_METRICS", "demo_metrics", "seed_range", "seed_range_verdict"):
        assert getattr(demo, name) is getattr(demo_seeds, name)
