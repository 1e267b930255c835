"""``evaluate_robustness``: clean, per-attack and worst-case accuracy of a video classifier, with routing diagnostics,
an ε sweep, reliability flags and inference cost, resumable and shardable across Accelerate processes.

How the numbers are defined
---------------------------
* A sample is **robust to an attack** when it is classified correctly clean *and* under that attack.
  ``robust_accuracy[a]`` is the fraction of *all* evaluated samples robust to ``a``.
* **Worst case** is the per-sample AND over all attacks (AutoAttack-style: a sample counts only if no attack fools
  it). In the default ``mode="full"`` every attack runs on every sample, so each attack's own accuracy is known, and
  the worst case is computed afterwards from the per-sample results; hence, per sample, ``worst case <= every single
  attack <= clean``. ``mode="cascade"`` works as AutoAttack does: each attack runs only on the samples the clean pass
  and every earlier attack left correctly classified, ``robust_accuracy[a]`` is then the accuracy *after* attacks up
  to ``a`` (cumulative), and the worst case is the same as in full mode for less work — for attacks that draw their
  randomness per sample from the sample itself, as every attack of this library does, on kernels whose results do not
  depend on the batch size (CPU here; GPU kernels may differ in the last bits).
* A worst case spans only attacks run at one **budget** (norm, ε; an attack's own settings may differ from ``eps``):
  ``worst_case_accuracy`` is the one at the report's ``eps`` / ``norm``, ``worst_case_by_budget`` has one per budget.
* **Routing change** is 1 − IoU of the selected-expert sets (top-k per routing unit), clean vs adversarial, averaged
  over units, then samples; per MoE layer and over all layers. **Lips-R** is MSE(R(x), R(x+δ)) / MSE(x, x+δ) on router
  probabilities (all MoE layers and units), averaged over samples. Both are computed per sample from the router logits
  of the clean and adversarial forward passes (the same definitions as ``hf_videomoe.attacks.diagnostics``, which
  return batch means), so that sharded and resumed runs aggregate exactly.
* **Perturbation energy** per frame f is ‖δ_f‖² (sum over channels and pixels), averaged over samples.

Reproducibility
---------------
The data is cut into global batches of ``batch_size`` consecutive samples. Before every attack call the global RNG
is reseeded from ``(seed, batch index, attack)``, so a batch's results do not depend on which process evaluates it,
on which other attacks run, or on whether the run was resumed. Under Accelerate, process ``r`` of ``w`` evaluates
batches ``k`` with ``k % w == r`` (every batch keeps its composition, so the sharded report is identical to the
single-process one), per-batch results are gathered with ``accelerate.utils.gather_object`` and every process returns
the same report.

With ``state_dir``, each finished batch is written atomically to ``state_dir/batches/batch_XXXXXXX.json`` (plain
JSON, never pickle) next to ``state_dir/settings.json``; rerunning with the same settings skips finished batches and
produces the identical report, with different settings it raises ``ValueError`` listing the differences.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import pixel_space_model
from ..data.decode import decode_for_model
from ..data.sources import make_source, sample_shape
from ..moe import is_moe_model
from .aggregation import aggregate
from .attack_specs import DEFAULT_ATTACKS, budget_plan, check_eps, json_default, resolve_attacks
from .cost import evaluation_cost
from .distributed import resolve_distributed
from .flags import FlagThresholds, compute_flags
from .input_checks import check_labels, check_model_input
from .report import RobustnessReport
from .runner import BatchEvaluator, EvaluationOptions
from .state import StateStore, expected_batches, model_fingerprint

__all__ = ["DEFAULT_ATTACKS", "evaluate_robustness"]


class _Excluding:
    """A set-like "every batch index except these"."""

    def __init__(self, excluded: set[int]):
        self.excluded = excluded

    def __contains__(self, index: int) -> bool:
        return index not in self.excluded


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {
        "hf_videomoe": __version__,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Public entry point


def evaluate_robustness(
    model: nn.Module,
    dataset: Any,
    attacks: Any = None,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int | None = None,
    step_size: float | None = None,
    seed: int = 0,
    attack_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    max_samples: int | None = None,
    eps_sweep: Sequence[float] | None = None,
    sweep_attacks: Sequence[str] | None = None,
    diagnostics: bool = True,
    compute_cost: bool = True,
    check_steps: bool = False,
    check_steps_attacks: Sequence[str] | str | None = None,
    check_steps_samples: int = 32,
    check_determinism: bool = True,
    check_gradients: bool = True,
    thresholds: FlagThresholds | Mapping[str, float] | None = None,
    state_dir: str | Path | None = None,
    accelerator: Any = None,
    return_per_sample: bool = False,
    dataset_name: str | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    mode: str = "full",
    exact_attacks: Sequence[str] | None = None,
) -> RobustnessReport:
    """Evaluate clean, per-attack and worst-case accuracy of a video classifier, with MoE routing diagnostics.

    Args:
        model: a video classifier taking ``pixel_values`` in [0, 1] of shape (batch, frames, channels, height,
            width) and returning ``logits`` (and ``router_logits`` for MoE models), e.g. a
            ``VideoMAEMoeForVideoClassification``. It is evaluated on the device it is on, in eval mode (its mode is
            restored afterwards).
        dataset: a ``datasets.Dataset`` with ``pixel_values`` and ``labels`` columns (formatted as torch, numpy or
            plain lists), a sequence of such dicts, a ``DataLoader`` yielding dict batches or any iterable of samples
            / batches (in a deterministic order).
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

    Returns:
        A [`RobustnessReport`]; identical on every process.

    Raises:
        ValueError: an unknown attack, an unusable ε (≤ 0, > 1 for L∞, empty sweep), an empty or unlabeled dataset,
            pixel values that do not match the model's config, labels out of range, MoE attacks on a dense model, or
            a ``state_dir`` written with other settings — all before any attack runs.
    """
    # 1. Cheap argument checks.
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    if mode not in ("full", "cascade"):
        raise ValueError(f"mode must be 'full' or 'cascade', got {mode!r}.")
    if mode == "cascade" and eps_sweep is not None:
        raise ValueError(
            "mode='cascade' runs each attack only on the samples still standing, so it has no "
            "per-attack accuracy to sweep over ε; use mode='full' for eps_sweep."
        )
    if exact_attacks is not None and mode != "cascade":
        raise ValueError(
            "exact_attacks only applies to mode='cascade' (in full mode every attack runs on every sample)."
        )
    eps = check_eps(eps, norm, "eps")
    if eps_sweep is not None:
        eps_sweep = list(eps_sweep)
        if not eps_sweep:
            raise ValueError("eps_sweep is empty: give at least one ε (e.g. [4/255, 8/255, 16/255]) or None.")
        eps_sweep = sorted({check_eps(e, norm, "eps_sweep value") for e in eps_sweep})
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if check_steps_samples < 1:
        raise ValueError(f"check_steps_samples must be >= 1, got {check_steps_samples}.")
    if thresholds is None:
        thresholds = FlagThresholds()
    elif isinstance(thresholds, Mapping):
        thresholds = FlagThresholds(**thresholds)

    # 2. Data: type, emptiness, labels, shape vs model config.
    # A dense checkpoint whose processor normalises (a Hub VideoMAE, local or in the Hub cache) takes [0, 1] pixels
    # through that normalisation.
    pixel_model = pixel_space_model(model, getattr(model, "name_or_path", None) or None)
    if pixel_model is not model:
        warnings.warn(
            f"{type(model).__name__} from {model.name_or_path}: its processor normalises, so the evaluation "
            "feeds it [0, 1] pixels normalised as the processor does (hf_videomoe.attacks.NormalizedModel)."
        )
        model = pixel_model
    source = make_source(decode_for_model(dataset, model), max_samples)
    check_model_input(model, source)
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    labels_fn = getattr(source, "labels", None)
    all_labels = None
    if labels_fn is not None and (all_labels := labels_fn()) is not None:
        check_labels(all_labels, num_labels)

    # 3. Attacks.
    moe = is_moe_model(model)
    shared = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "seed": seed}
    specs = resolve_attacks(attacks, shared=shared, extra=dict(attack_kwargs or {}), moe=moe)
    budgets, headline_budget = budget_plan(specs, eps, norm, mode)  # a worst case per budget each attack ran at
    labels = [s.label for s in specs]
    exact_attacks = list(exact_attacks or [])
    unknown = [a for a in exact_attacks if a not in labels]
    if unknown:
        raise ValueError(f"exact_attacks {unknown} are not among the evaluated attacks {labels}.")
    if sweep_attacks is None:
        sweep_attacks = labels if eps_sweep else []
    else:
        sweep_attacks = list(sweep_attacks)
        unknown = [a for a in sweep_attacks if a not in labels]
        if unknown:
            raise ValueError(f"sweep_attacks {unknown} are not among the evaluated attacks {labels}.")
    steps_check: dict[str, int] = {}
    if check_steps:
        multi_step = [
            s for s in specs if s.white_box and int(s.settings().get("steps", getattr(s.attack, "steps", 1)) or 1) > 1
        ]
        if check_steps_attacks == "all":
            chosen = multi_step
        elif check_steps_attacks is None:
            chosen = multi_step[:1]
        else:
            names = [check_steps_attacks] if isinstance(check_steps_attacks, str) else list(check_steps_attacks)
            unknown = [a for a in names if a not in labels]
            if unknown:
                raise ValueError(f"check_steps_attacks {unknown} are not among the evaluated attacks {labels}.")
            chosen = [s for s in specs if s.label in names]
        if mode == "cascade":
            if check_steps_attacks is None:  # the first multi-step attack that runs on every sample
                chosen = [s for s in multi_step if s.label in exact_attacks][:1] or chosen
            cascaded = [s.label for s in chosen if s.label not in exact_attacks]
            if cascaded:
                raise ValueError(
                    f"check_steps in mode='cascade' needs attacks that run on every sample, but {cascaded} "
                    "run only on the samples still standing; list them in exact_attacks or use "
                    "mode='full'."
                )
        for spec in chosen:
            base_steps = int(spec.settings().get("steps", getattr(spec.attack, "steps", 1)) or 1)
            steps_check[spec.label] = 2 * base_steps
            spec.variant(steps=2 * base_steps)  # fail now, not after the first batch
    for spec in specs:
        if spec.label in sweep_attacks:
            for e in eps_sweep or []:
                spec.variant(eps=e)

    options = EvaluationOptions(
        seed=int(seed),
        eps=eps,
        diagnostics=bool(diagnostics),
        check_determinism=bool(check_determinism),
        check_gradients=bool(check_gradients),
        eps_sweep=eps_sweep,
        sweep_attacks=list(sweep_attacks),
        steps_check=steps_check or None,
        steps_check_samples=int(check_steps_samples),
        return_per_sample=bool(return_per_sample),
        cascade=mode == "cascade",
        exact_attacks=tuple(exact_attacks),
        budgets=budgets,
        headline_budget=headline_budget,
    )
    dist = resolve_distributed(accelerator)

    # 4. Resumable state.
    store = None
    if state_dir is not None:
        settings = {
            "attacks": [[s.label, s.settings()] for s in specs],
            "eps": eps,
            "norm": norm,
            "seed": int(seed),
            "batch_size": batch_size,
            "max_samples": max_samples,
            "eps_sweep": eps_sweep,
            "sweep_attacks": list(sweep_attacks),
            "steps_check": steps_check or None,
            "steps_check_samples": int(check_steps_samples) if steps_check else None,
            "diagnostics": bool(diagnostics and moe),
            "check_determinism": bool(check_determinism),
            "check_gradients": bool(check_gradients),
            "data": source.fingerprint(),
            "model": model_fingerprint(model),
        }
        if mode != "full":  # absent in full mode, so state written before the option existed still resumes
            settings["mode"] = mode
            settings["exact_attacks"] = exact_attacks
        settings = json.loads(json.dumps(settings))
        store = StateStore(state_dir, settings, dist)

    # 5. Cost (cheap: one forward of each model).
    cost = evaluation_cost(model) if compute_cost else {}

    # 6. The loop.
    evaluator = BatchEvaluator(model, specs, options)
    expected = expected_batches(source.num_samples, batch_size, all_labels)
    done = store.done(dist.rank, dist.world, expected) if store is not None else set()
    total_batches = None if source.num_samples is None else -(-source.num_samples // batch_size)
    my_total = None if total_batches is None else len(range(dist.rank, total_batches, dist.world))
    records: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    bar = tqdm(
        total=my_total,
        desc="Robustness evaluation",
        unit="batch",
        disable=not progress or not dist.is_main,
        dynamic_ncols=True,
    )
    try:
        # Finished batches are not even loaded when their labels were cross-checked without loading (`done`).
        wanted = _Excluding(done) if done and all_labels is not None else None
        for batch in source.batches(batch_size, wanted, dist.world, dist.rank):
            record = store.load(batch.index, batch) if batch.index in done else None
            if record is None:
                check_labels(batch.labels, num_labels)
                record = evaluator.run_batch(batch)
                if store is not None:
                    store.save(record)
            records.append(record)
            bar.update(1)
            clean_done = sum(p == l for r in records for p, l in zip(r["clean_pred"], r["labels"]))
            seen = sum(len(r["labels"]) for r in records)
            bar.set_postfix(clean=f"{clean_done / seen:.3f}", refresh=False)
            if callback is not None:
                callback({"batch_index": batch.index, "completed": len(records), "total": my_total, "record": record})
    finally:
        bar.close()
        model.train(was_training)

    all_records = dist.gather(records)
    if not all_records or sum(len(r["labels"]) for r in all_records) == 0:
        raise ValueError("The evaluation dataset is empty.")
    agg = aggregate(all_records, specs, options)

    # 7. Flags and report.
    flags, checks = compute_flags(
        robust_accuracy=agg["robust_accuracy"],
        # Attacks are compared only at one budget (the headline's): a stronger attack at a larger ε is no masking.
        white_box=[s.label for s in specs if s.white_box and s.label in budgets[headline_budget]["attacks"]],
        black_box=[s.label for s in specs if not s.white_box and s.label in budgets[headline_budget]["attacks"]],
        eps_sweep=agg["eps_sweep"],
        sweep_requested=bool(eps_sweep),
        steps_check=agg["steps_check"],
        steps_requested=bool(check_steps),
        determinism=agg["determinism"],
        gradients=agg["gradients"],
        thresholds=thresholds,
        expert_usage=agg["expert_usage"].get("clean"),
        routing_relevance=agg["routing_relevance"],
        probability_outputs=agg["probability_like"],
        cascade=mode == "cascade",
    )
    config = getattr(model, "config", None)
    return RobustnessReport(
        clean_accuracy=agg["clean_accuracy"],
        robust_accuracy=agg["robust_accuracy"],
        worst_case_accuracy=agg["worst_case_accuracy"],
        worst_case_by_budget=agg["worst_case_by_budget"],
        num_samples=agg["num_samples"],
        eps=budgets[headline_budget]["eps"],
        norm=budgets[headline_budget]["norm"],
        input_shape=[int(v) for v in sample_shape(source.first_sample())],
        steps=steps,
        seed=int(seed),
        attacks=labels,
        attack_settings={s.label: s.settings() for s in specs},
        attack_arguments={
            s.label: json.loads(json.dumps({"name": s.name, **s.kwargs}, default=json_default))
            if s.kwargs is not None
            else {"instance": type(s.attack).__name__}
            for s in specs
        },
        routing_change=agg["routing_change"],
        routing_change_per_layer=agg["routing_change_per_layer"],
        router_lipschitz=agg["router_lipschitz"],
        batch_size=batch_size,
        eps_sweep=agg["eps_sweep"],
        expert_usage=agg["expert_usage"],
        routing_relevance=agg["routing_relevance"],
        frozen_routing=agg["frozen_routing"],
        perturbation_energy=agg["perturbation_energy"],
        flags=flags,
        checks=checks,
        steps_check=agg["steps_check"],
        model_class=type(model).__name__,
        model_type=getattr(config, "model_type", None),
        dataset_name=dataset_name,
        versions=_versions(),
        per_sample=agg.get("per_sample"),
        mode=mode,
        exact_attacks=exact_attacks,
        **cost,
    )
