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
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import pixel_space_model
from ..data.decode import decode_for_model
from ..data.sources import make_source, sample_shape
from ..moe import is_moe_model
from .aggregation import aggregate
from .arguments import RobustnessArguments, merge_arguments
from .attack_specs import DEFAULT_ATTACKS, json_default
from .cost import evaluation_cost
from .distributed import Distribution, resolve_distributed
from .flags import compute_flags
from .input_checks import check_labels, check_model_input
from .planning import EvaluationPlan, plan_evaluation
from .report import ReliabilityFlag, RobustnessReport
from .runner import BatchEvaluator
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
    model: nn.Module, dataset: Any, args: RobustnessArguments | None = None, **kwargs: Any
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
        args: the options, a [`RobustnessArguments`] (default: all its defaults). A third positional argument that is
            not a `RobustnessArguments` is read as ``attacks``
            (``evaluate_robustness(model, dataset, ["pgd"], eps=4 / 255)``), the short form for a list of attacks.
        kwargs: fields of [`RobustnessArguments`] (``attacks``, ``eps``, ``mode``, ...). Given with ``args``, they
            override its values (as ``dataclasses.replace(args, **kwargs)``, validated again), so one set of
            arguments can serve several runs.

    Returns:
        A [`RobustnessReport`]; identical on every process.

    Raises:
        TypeError: a keyword argument that is no field of [`RobustnessArguments`] (the message lists the fields).
        ValueError: an unknown attack, an unusable ε (≤ 0, > 1 for L∞, empty sweep), an empty or unlabeled dataset,
            pixel values that do not match the model's config, labels out of range, MoE attacks on a dense model, or
            a ``state_dir`` written with other settings — all before any attack runs.
    """
    args = _resolve_arguments(args, kwargs)
    model, source, all_labels = _prepare_inputs(model, dataset, args)
    moe = is_moe_model(model)
    plan = plan_evaluation(args, moe)
    dist = resolve_distributed(args.accelerator)
    store = None
    if args.state_dir is not None:
        store = StateStore(args.state_dir, _state_settings(args, plan, source, model, moe), dist)
    # Cheap (one forward of each model), and called from here so that its warnings point at the caller.
    cost = evaluation_cost(model) if args.compute_cost else {}
    records = _run_batches(model, source, all_labels, plan, args, store, dist)
    agg = aggregate(records, plan.specs, plan.options)
    flags, checks = _reliability_flags(agg, plan, args)
    return _assemble_report(model, source, args, plan, agg, flags, checks, cost)


def _resolve_arguments(args: Any, overrides: dict[str, Any]) -> RobustnessArguments:
    if args is not None and not isinstance(args, RobustnessArguments):
        # The short form: a list of attacks in third position (the trainer and scripts call it so).
        if "attacks" in overrides:
            raise TypeError("evaluate_robustness() got multiple values for argument 'attacks'.")
        args, overrides = None, {"attacks": args, **overrides}
    return merge_arguments(args, overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Steps of the evaluation


def _num_labels(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "num_labels", None)


def _prepare_inputs(model: nn.Module, dataset: Any, args: RobustnessArguments):
    """``(model, source, all_labels)``: the model to evaluate, the samples, and every label when the source lists them
    without loading clips. Checks the data (type, emptiness, labels, shape vs the model's config)."""
    # A dense checkpoint whose processor normalises (a Hub VideoMAE, local or in the Hub cache) takes [0, 1] pixels
    # through that normalisation.
    pixel_model = pixel_space_model(model, getattr(model, "name_or_path", None) or None)
    if pixel_model is not model:
        warnings.warn(
            f"{type(model).__name__} from {model.name_or_path}: its processor normalises, so the evaluation "
            "feeds it [0, 1] pixels normalised as the processor does (hf_videomoe.attacks.NormalizedModel)."
        )
        model = pixel_model
    source = make_source(decode_for_model(dataset, model), args.max_samples)
    check_model_input(model, source)
    labels_fn = getattr(source, "labels", None)
    all_labels = None
    if labels_fn is not None and (all_labels := labels_fn()) is not None:
        check_labels(all_labels, _num_labels(model))
    return model, source, all_labels


def _state_settings(
    args: RobustnessArguments, plan: EvaluationPlan, source: Any, model: nn.Module, moe: bool
) -> dict[str, Any]:
    """What a resumable state is valid for: a rerun with other settings must not reuse its batches."""
    steps_check = plan.steps_check
    settings = {
        "attacks": [[s.label, s.settings()] for s in plan.specs],
        "eps": args.eps,
        "norm": args.norm,
        "seed": int(args.seed),
        "batch_size": args.batch_size,
        "max_samples": args.max_samples,
        "eps_sweep": args.eps_sweep,
        "sweep_attacks": list(plan.sweep_attacks),
        "steps_check": steps_check or None,
        "steps_check_samples": int(args.check_steps_samples) if steps_check else None,
        "diagnostics": bool(args.diagnostics and moe),
        "check_determinism": bool(args.check_determinism),
        "check_gradients": bool(args.check_gradients),
        "data": source.fingerprint(),
        "model": model_fingerprint(model),
    }
    if args.mode != "full":  # absent in full mode, so state written before the option existed still resumes
        settings["mode"] = args.mode
        settings["exact_attacks"] = plan.exact_attacks
    return json.loads(json.dumps(settings))


def _run_batches(
    model: nn.Module,
    source: Any,
    all_labels: list[int] | None,
    plan: EvaluationPlan,
    args: RobustnessArguments,
    store: StateStore | None,
    dist: Distribution,
) -> list[dict[str, Any]]:
    """Evaluate this process's batches in eval mode (finished ones read back from ``store``), then gather the records
    of every process."""
    evaluator = BatchEvaluator(model, plan.specs, plan.options)
    num_labels = _num_labels(model)
    batch_size = args.batch_size
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
        disable=not args.progress or not dist.is_main,
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
            if args.callback is not None:
                args.callback(
                    {"batch_index": batch.index, "completed": len(records), "total": my_total, "record": record}
                )
    finally:
        bar.close()
        model.train(was_training)

    all_records = dist.gather(records)
    if not all_records or sum(len(r["labels"]) for r in all_records) == 0:
        raise ValueError("The evaluation dataset is empty.")
    return all_records


def _reliability_flags(
    agg: dict[str, Any], plan: EvaluationPlan, args: RobustnessArguments
) -> tuple[list[ReliabilityFlag], dict[str, str]]:
    return compute_flags(
        robust_accuracy=agg["robust_accuracy"],
        white_box=plan.headline_attacks(white_box=True),
        black_box=plan.headline_attacks(white_box=False),
        eps_sweep=agg["eps_sweep"],
        sweep_requested=bool(args.eps_sweep),
        steps_check=agg["steps_check"],
        steps_requested=bool(args.check_steps),
        determinism=agg["determinism"],
        gradients=agg["gradients"],
        thresholds=args.thresholds,
        expert_usage=agg["expert_usage"].get("clean"),
        routing_relevance=agg["routing_relevance"],
        probability_outputs=agg["probability_like"],
        cascade=args.mode == "cascade",
    )


def _assemble_report(
    model: nn.Module,
    source: Any,
    args: RobustnessArguments,
    plan: EvaluationPlan,
    agg: dict[str, Any],
    flags: list[ReliabilityFlag],
    checks: dict[str, str],
    cost: dict[str, Any],
) -> RobustnessReport:
    config = getattr(model, "config", None)
    headline = plan.budgets[plan.headline_budget]
    specs = plan.specs
    return RobustnessReport(
        clean_accuracy=agg["clean_accuracy"],
        robust_accuracy=agg["robust_accuracy"],
        worst_case_accuracy=agg["worst_case_accuracy"],
        worst_case_by_budget=agg["worst_case_by_budget"],
        num_samples=agg["num_samples"],
        eps=headline["eps"],
        norm=headline["norm"],
        input_shape=[int(v) for v in sample_shape(source.first_sample())],
        steps=args.steps,
        seed=int(args.seed),
        attacks=plan.labels,
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
        batch_size=args.batch_size,
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
        dataset_name=args.dataset_name,
        versions=_versions(),
        per_sample=agg.get("per_sample"),
        mode=args.mode,
        exact_attacks=plan.exact_attacks,
        **cost,
    )
