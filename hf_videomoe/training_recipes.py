"""The project's training recipe for MovingShapes runs, one home for the demo and the reproduction.

Every phase of both pipelines (the clean dense baseline, the mixture phase of the upcycled MoE and each adversarial
training run) trains with the same `AdversarialTrainingArguments`: AdamW with weight decay 0.05, a cosine schedule
after a linear warm-up, no evaluation or checkpoints inside `Trainer` (each pipeline saves and evaluates the final
model itself). A phase differs only in its epochs, learning rate and adversarial settings, which its caller passes.

The JSON option sets under ``hf_videomoe/recipes/`` are another thing: the paper's setting per real dataset, for
``hf-videomoe train --recipe``.
"""

from __future__ import annotations

from pathlib import Path

from .training import AdversarialTrainingArguments

__all__ = ["DEMO_WARMUP_STEPS", "RECIPE_LOGGING_STEPS", "REPRODUCTION_WARMUP_STEPS", "recipe_training_arguments"]

#: The linear warm-up, in optimizer steps, of the demo and of the reproduction: the one hyper-parameter their recipes
#: do not share. Both have recorded weights that depend on it (the demo's seeds in ``hf_videomoe/demo_seeds.json``; the
#: reproduction's checkpoints, which a rerun must match bit for bit to the fingerprint in their ``train.json``), so
#: each keeps its own. (The reproduction also
#: seeds the data order, keeps off Apple's MPS and hides progress bars off a terminal: see its `training_arguments`.)
DEMO_WARMUP_STEPS = 10
REPRODUCTION_WARMUP_STEPS = 5

#: One log line (and, in the adversarial trainers, the training diagnostics it carries: an extra eval-mode forward pass
#: and an FGSM probe of the batch) every 50 optimizer steps, for both pipelines: logging does not change the weights
#: (the diagnostics run with frozen parameters and draw nothing from the global RNG), but it costs time, and the
#: reproduction's cost columns and its compute-matched row were measured at 50.
RECIPE_LOGGING_STEPS = 50


def recipe_training_arguments(
    output_dir: str | Path,
    *,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    seed: int,
    warmup_steps: int,
    data_seed: int | None = None,
    use_cpu: bool = False,
    show_progress: bool = True,
    **adversarial,
) -> AdversarialTrainingArguments:
    """The `AdversarialTrainingArguments` of one training phase of the demo or the reproduction.

    Args:
        output_dir (`str` or `Path`):
            `Trainer`'s output folder (nothing is saved there: ``save_strategy="no"``).
        epochs (`float`), learning_rate (`float`), batch_size (`int`), seed (`int`):
            The phase's length, peak learning rate, per-device train and eval batch size, and seed.
        warmup_steps (`int`):
            Linear warm-up before the cosine decay, in optimizer steps. No default: each pipeline passes its own,
            `DEMO_WARMUP_STEPS` or `REPRODUCTION_WARMUP_STEPS`.
        data_seed (`int`, *optional*):
            `TrainingArguments.data_seed`, the seed of the training data's order (`None`: taken from ``seed``).
        use_cpu (`bool`, *optional*, defaults to `False`):
            Train on the CPU even where an accelerator is available.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show `Trainer`'s progress bar (``disable_tqdm=not show_progress``).
        adversarial:
            Further `AdversarialTrainingArguments` fields: the adversarial phase's ``adv_method``, ``adv_eps``,
            ``adv_steps`` and any method-specific setting. They may not repeat a field the recipe sets.

    Example:

    ```python
    >>> from hf_videomoe.training_recipes import recipe_training_arguments
    >>> args = recipe_training_arguments(
    ...     "out", epochs=5, learning_rate=5e-4, batch_size=32, seed=0, warmup_steps=10, adv_method="j-tlat"
    ... )
    ```
    """
    return AdversarialTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.05,
        warmup_steps=warmup_steps,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=RECIPE_LOGGING_STEPS,
        seed=seed,
        data_seed=data_seed,
        report_to=[],
        disable_tqdm=not show_progress,
        use_cpu=use_cpu,
        **adversarial,
    )
