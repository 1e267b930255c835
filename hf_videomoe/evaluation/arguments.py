"""`RobustnessArguments`: every option of [`evaluate_robustness`] in one dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attack_specs import check_eps
from .flags import FlagThresholds

__all__ = ["RobustnessArguments", "merge_arguments"]


@dataclass
class RobustnessArguments:
    r"""The options of [`evaluate_robustness`], in the manner of [`~transformers.TrainingArguments`].

    Construction checks what can be checked without the model or the data (norm, mode, ε values, batch size...) and
    raises a `ValueError` naming the option; what depends on the attacks (e.g. ``sweep_attacks`` naming an evaluated
    attack) is checked by [`evaluate_robustness`] before any attack runs. After construction ``eps`` is a float,
    ``eps_sweep`` the sorted distinct ε values (or ``None``) and ``thresholds`` a [`FlagThresholds`].
    ``dataclasses.replace`` validates again, so one set of arguments can serve as the base of several runs.

    Parameters:
        attacks: attack names (``"pgd"``, ``"j-tlga"``, ...), ``Attack`` instances, or a dict ``{label: kwargs or
            Attack}`` (kwargs may include ``"name"`` to run variants of one attack, e.g. ``{"pgd-50": {"name": "pgd",
            "steps": 50}}``). ``None`` runs [`DEFAULT_ATTACKS`] (MoE-only attacks dropped for dense models). A list
            may also name a preset of [`ATTACK_PRESETS`]: ``"autoattack"`` is AutoAttack's standard ensemble
            (APGD-CE and APGD-T with 100 steps, Square with 5,000 queries; its own settings, not ``steps``).
        eps, norm, steps, step_size, seed: shared settings of the attacks built by name (``steps`` / ``step_size``
            ``None`` keep each attack's default). ``seed`` also seeds the per-batch RNG.
        attack_kwargs: more keyword arguments for every attack built by name (e.g. ``{"restarts": 2}``).
        batch_size: samples per batch.
        max_samples: evaluate only the first ``max_samples`` samples.
        eps_sweep: ε values at which to rerun the attacks (robust accuracy vs ε); ``eps`` is always on the curve.
        sweep_attacks: which attacks the sweep covers (default: all).
        diagnostics: compute routing change, Lips-R and expert usage (MoE models only).
        compute_cost: count FLOPs and parameters of the model and of the dense model of the same shape.
        check_steps: rerun white-box attacks with twice the steps on the first ``check_steps_samples`` samples and
            flag accuracy that rises with steps.
        check_steps_attacks: which attacks (default: the first multi-step white-box attack; ``"all"`` for all).
        check_steps_samples: how many samples the steps check reruns.
        check_determinism: run every clean forward twice and flag differing logits.
        check_gradients: compute the input gradient of the CE per sample and flag zero / NaN gradients.
        thresholds: margins of the reliability flags (a [`FlagThresholds`] or a dict of its fields).
        state_dir: folder for resumable per-batch state (JSON, atomic writes).
        accelerator: an ``accelerate.Accelerator`` / ``PartialState`` to shard over processes; by default an already
            initialised ``PartialState`` (or a ``WORLD_SIZE > 1`` launch) is detected.
        return_per_sample: keep per-sample predictions in ``report.per_sample``.
        dataset_name: recorded in the report (and the model card).
        progress: show a tqdm progress bar (main process only).
        callback: called after every finished batch with ``{"batch_index", "completed", "total", "record"}``;
            an exception it raises stops the evaluation (finished batches stay in ``state_dir``).
        mode: ``"full"`` (every attack on every sample: per-attack accuracies, routing diagnostics per attack, ε
            sweep and steps check) or ``"cascade"`` (AutoAttack's: each attack only on the samples still standing;
            the same worst case, cumulative per-attack accuracies, no per-attack routing diagnostics, sweep or steps
            check; ``scripts/bench_cascade.py`` measures the saving).
        exact_attacks: with ``mode="cascade"``, attacks that still run on every sample first, with their own
            accuracy, routing diagnostics and (if asked) steps check; the cascade then starts from the samples the
            clean pass and all of them left standing (e.g. the paper's attacks exact, AutoAttack's cascaded).
    """

    attacks: Any = field(
        default=None, metadata={"help": "Attack names, Attack instances or {label: kwargs}; None: DEFAULT_ATTACKS."}
    )
    eps: float = field(default=8 / 255, metadata={"help": "Shared perturbation budget, in [0, 1] pixel units."})
    norm: str = field(default="linf", metadata={"help": "Threat model of the shared budget: 'linf' or 'l2'."})
    steps: int | None = field(default=None, metadata={"help": "Shared step count (None: each attack's default)."})
    step_size: float | None = field(default=None, metadata={"help": "Shared step size (None: each attack's default)."})
    seed: int = field(default=0, metadata={"help": "Seed of the attacks and of the per-batch RNG."})
    attack_kwargs: Mapping[str, Any] | None = field(
        default=None, metadata={"help": "More keyword arguments for every attack built by name."}
    )
    batch_size: int = field(default=8, metadata={"help": "Samples per batch."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first max_samples samples."})
    eps_sweep: Sequence[float] | None = field(
        default=None, metadata={"help": "ε values at which to rerun the attacks (robust accuracy vs ε)."}
    )
    sweep_attacks: Sequence[str] | None = field(
        default=None, metadata={"help": "Attacks the ε sweep covers (None: all)."}
    )
    diagnostics: bool = field(
        default=True, metadata={"help": "Routing change, Lips-R and expert usage (MoE models only)."}
    )
    compute_cost: bool = field(default=True, metadata={"help": "Count FLOPs and parameters, MoE and dense."})
    check_steps: bool = field(default=False, metadata={"help": "Rerun white-box attacks with twice the steps."})
    check_steps_attacks: Sequence[str] | str | None = field(
        default=None, metadata={"help": "Attacks of the steps check (None: the first multi-step one; 'all')."}
    )
    check_steps_samples: int = field(default=32, metadata={"help": "Samples the steps check reruns."})
    check_determinism: bool = field(default=True, metadata={"help": "Run every clean forward twice, compare logits."})
    check_gradients: bool = field(default=True, metadata={"help": "Flag zero / NaN input gradients of the CE."})
    thresholds: FlagThresholds | Mapping[str, float] | None = field(
        default=None, metadata={"help": "Margins of the reliability flags (FlagThresholds or a dict of its fields)."}
    )
    state_dir: str | Path | None = field(
        default=None, metadata={"help": "Folder for resumable per-batch state (JSON, atomic writes)."}
    )
    accelerator: Any = field(
        default=None, metadata={"help": "accelerate Accelerator / PartialState to shard over processes."}
    )
    return_per_sample: bool = field(default=False, metadata={"help": "Keep per-sample predictions in the report."})
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset label recorded in the report."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (main process only)."})
    callback: Callable[[dict[str, Any]], None] | None = field(
        default=None, metadata={"help": "Called after every finished batch."}
    )
    mode: str = field(default="full", metadata={"help": "'full' (every attack on every sample) or 'cascade'."})
    exact_attacks: Sequence[str] | None = field(
        default=None, metadata={"help": "In cascade mode, attacks that still run on every sample first."}
    )

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}.")
        if self.mode not in ("full", "cascade"):
            raise ValueError(f"mode must be 'full' or 'cascade', got {self.mode!r}.")
        if self.mode == "cascade" and self.eps_sweep is not None:
            raise ValueError(
                "mode='cascade' runs each attack only on the samples still standing, so it has no "
                "per-attack accuracy to sweep over ε; use mode='full' for eps_sweep."
            )
        if self.exact_attacks is not None and self.mode != "cascade":
            raise ValueError(
                "exact_attacks only applies to mode='cascade' (in full mode every attack runs on every sample)."
            )
        self.eps = check_eps(self.eps, self.norm, "eps")
        if self.eps_sweep is not None:
            eps_sweep = list(self.eps_sweep)
            if not eps_sweep:
                raise ValueError("eps_sweep is empty: give at least one ε (e.g. [4/255, 8/255, 16/255]) or None.")
            self.eps_sweep = sorted({check_eps(e, self.norm, "eps_sweep value") for e in eps_sweep})
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.check_steps_samples < 1:
            raise ValueError(f"check_steps_samples must be >= 1, got {self.check_steps_samples}.")
        if self.thresholds is None:
            self.thresholds = FlagThresholds()
        elif isinstance(self.thresholds, Mapping):
            self.thresholds = FlagThresholds(**self.thresholds)


def merge_arguments(args: RobustnessArguments | None, overrides: Mapping[str, Any]) -> RobustnessArguments:
    """``args`` (default: all defaults) with ``overrides`` applied as by ``dataclasses.replace`` (validated again).

    Raises:
        TypeError: ``args`` is not a `RobustnessArguments`, or an override names no field of it (the message lists
            the fields).
    """
    if args is not None and not isinstance(args, RobustnessArguments):
        raise TypeError(f"args must be a RobustnessArguments or None, got {type(args).__name__}.")
    names = [f.name for f in dataclasses.fields(RobustnessArguments)]
    unknown = [key for key in overrides if key not in names]
    if unknown:
        raise TypeError(
            f"evaluate_robustness() got unexpected keyword argument(s) {unknown}; the options are the fields of "
            f"RobustnessArguments: {', '.join(names)}."
        )
    if args is None:
        return RobustnessArguments(**overrides)
    return dataclasses.replace(args, **overrides) if overrides else args
