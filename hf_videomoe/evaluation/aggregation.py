"""From per-batch records to the report's numbers (exact under sharding and resuming: only sums and per-sample
values are combined)."""

from __future__ import annotations

from typing import Any

from ..moe import summarize_relevance
from .attack_specs import AttackSpec, spec_eps
from .runner import EvaluationOptions

__all__ = ["aggregate"]


def mean_of(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def aggregate(records: list[dict[str, Any]], specs: list[AttackSpec], options: EvaluationOptions) -> dict[str, Any]:
    """The report's numbers from every batch record (in any order): accuracies and worst cases, perturbation energy,
    routing diagnostics and controls, ε sweep, steps check, the reliability checks' inputs and per-sample results."""
    records = sorted(records, key=lambda r: r["batch"])
    labels = [l for r in records for l in r["labels"]]
    n = len(labels)
    clean = [p == l for r in records for p, l in zip(r["clean_pred"], r["labels"])]
    out: dict[str, Any] = {"num_samples": n, "clean_accuracy": sum(clean) / n}
    robust_per_sample: dict[str, list[bool]] = {}
    for spec in specs:
        preds = [p for r in records for p in r["attacks"][spec.label]["pred"]]
        robust_per_sample[spec.label] = [c and p == l for c, p, l in zip(clean, preds, labels)]
    out["robust_accuracy"] = {a: sum(v) / n for a, v in robust_per_sample.items()}
    out["worst_case_by_budget"], worst = _worst_cases(robust_per_sample, specs, options, n)
    out["worst_case_accuracy"] = sum(worst) / n
    out["perturbation_energy"] = _perturbation_energy(records, specs, n)
    out.update(_routing_diagnostics(records, specs))
    out["routing_relevance"], out["frozen_routing"] = _routing_controls(records, specs, labels, clean)
    out["eps_sweep"] = _eps_sweep(records, specs, options, labels, clean, out["robust_accuracy"])
    out["steps_check"] = _steps_check(records, specs, options)
    # Outputs that look like probabilities (records of an older evaluator lack the check).
    out["probability_like"] = (
        all(r["probability_like"] for r in records) if all("probability_like" in r for r in records) else None
    )
    out["determinism"], out["gradients"] = _forward_checks(records, options, n)
    if options.return_per_sample:
        out["per_sample"] = _per_sample(records, specs, labels, worst, out)
    return out


def _worst_cases(
    robust_per_sample: dict[str, list[bool]], specs: list[AttackSpec], options: EvaluationOptions, n: int
) -> tuple[dict[str, Any], list[bool]]:
    """``(worst_case_by_budget, the headline worst case per sample)``. A worst case is taken per budget (norm, ε): a
    clip counts only if it resists every attack of that budget."""
    budgets = options.budgets or {"all": {"attacks": [s.label for s in specs]}}
    worst_by_budget = {
        key: [all(robust_per_sample[a][i] for a in budget["attacks"]) for i in range(n)]
        for key, budget in budgets.items()
    }
    by_budget = (
        {
            key: {**budget, "attacks": list(budget["attacks"]), "accuracy": sum(worst_by_budget[key]) / n}
            for key, budget in budgets.items()
        }
        if options.budgets
        else {}
    )
    return by_budget, worst_by_budget[options.headline_budget if options.budgets else "all"]


def _perturbation_energy(records: list[dict[str, Any]], specs: list[AttackSpec], n: int) -> dict[str, list[float]]:
    """Attack → mean ‖δ_f‖² per frame."""
    energy = {}
    for spec in specs:
        total = None
        for r in records:
            values = r["attacks"][spec.label]["energy_sum"]
            total = list(values) if total is None else [a + b for a, b in zip(total, values)]
        energy[spec.label] = [v / n for v in total]
    return energy


def _usage_shares(records: list[dict[str, Any]], counts_of) -> list[list[float]]:
    """Per MoE layer, the share of routing decisions each expert got (counts summed over batches)."""
    total = None
    for r in records:
        counts = counts_of(r)
        total = counts if total is None else [[a + b for a, b in zip(x, y)] for x, y in zip(total, counts)]
    return [[c / max(sum(layer), 1) for c in layer] for layer in total]


def _routing_diagnostics(records: list[dict[str, Any]], specs: list[AttackSpec]) -> dict[str, dict[str, Any]]:
    """Routing change (overall and per layer), Lips-R and expert usage; empty without diagnostics."""
    out: dict[str, dict[str, Any]] = {
        "routing_change": {},
        "routing_change_per_layer": {},
        "router_lipschitz": {},
        "expert_usage": {},
    }
    if not records or "clean_usage" not in records[0]:
        return out
    out["expert_usage"]["clean"] = _usage_shares(records, lambda r: r["clean_usage"])
    for spec in specs:
        if "routing_change" not in records[0]["attacks"][spec.label]:
            continue
        per_sample = [row for r in records for row in r["attacks"][spec.label]["routing_change"]]
        num_layers = len(per_sample[0]) if per_sample else 0
        out["routing_change_per_layer"][spec.label] = [
            mean_of([row[i] for row in per_sample]) for i in range(num_layers)
        ]
        out["routing_change"][spec.label] = mean_of([mean_of(row) for row in per_sample])
        lips = [v for r in records for v in r["attacks"][spec.label]["router_lipschitz"] if v is not None]
        out["router_lipschitz"][spec.label] = mean_of(lips) if lips else 0.0
        out["expert_usage"][spec.label] = _usage_shares(records, lambda r, a=spec.label: r["attacks"][a]["usage"])
    return out


def _routing_controls(
    records: list[dict[str, Any]], specs: list[AttackSpec], labels: list[int], clean: list[bool]
) -> tuple[dict[str, Any] | None, dict[str, dict[str, float]]]:
    """Routing relevance (learned vs random routing, forced paths) and the frozen-routing controls per attack;
    records written by a version without them (a resumed state_dir) leave these empty."""
    if not (records and all("relevance" in r for r in records)):
        return None, {}
    n = len(labels)
    clean_preds = [p for r in records for p in r["clean_pred"]]
    random_preds = [p for r in records for p in r["relevance"]["random"]]
    num_paths = len(records[0]["relevance"]["forced"])
    forced = [[p for r in records for p in r["relevance"]["forced"][e]] for e in range(num_paths)]
    relevance = summarize_relevance(labels, clean_preds, random_preds, forced)
    frozen = {}
    for spec in specs:
        if not all("frozen_routing" in r["attacks"][spec.label] for r in records):
            continue
        controls = {}
        for key in ("adv_input_clean_routing", "clean_input_adv_routing"):
            preds = [p for r in records for p in r["attacks"][spec.label]["frozen_routing"][key]]
            controls[key] = sum(c and p == l for c, p, l in zip(clean, preds, labels)) / n
        frozen[spec.label] = controls
    return relevance, frozen


def _eps_sweep(
    records: list[dict[str, Any]],
    specs: list[AttackSpec],
    options: EvaluationOptions,
    labels: list[int],
    clean: list[bool],
    robust_accuracy: dict[str, float],
) -> dict[str, dict[float, float]]:
    """Attack → {ε: robust accuracy}, with the attack's own ε on the curve."""
    sweep: dict[str, dict[float, float]] = {}
    if not options.eps_sweep:
        return sweep
    n = len(labels)
    for spec in specs:
        if spec.label not in options.sweep_attacks:
            continue
        curve = {}
        for eps in options.eps_sweep:
            key = repr(eps)
            if all(key in r["sweep"][spec.label] for r in records):
                preds = [p for r in records for p in r["sweep"][spec.label][key]]
                curve[eps] = sum(c and p == l for c, p, l in zip(clean, preds, labels)) / n
            else:
                curve[eps] = robust_accuracy[spec.label]
        main_eps = spec_eps(spec)
        if main_eps is not None and main_eps not in curve:
            curve[float(main_eps)] = robust_accuracy[spec.label]
        sweep[spec.label] = dict(sorted(curve.items()))
    return sweep


def _steps_check(
    records: list[dict[str, Any]], specs: list[AttackSpec], options: EvaluationOptions
) -> dict[str, dict[str, Any]]:
    """Attack → accuracy with its steps and with twice the steps, on the samples the check reran."""
    steps_check = {}
    for label, doubled in (options.steps_check or {}).items():
        base_correct, doubled_correct = [], []
        for r in records:
            entry = (r.get("steps_check") or {}).get(label)
            if not entry:
                continue
            base_preds = r["attacks"][label]["pred"]
            for pos, p2 in zip(entry["positions"], entry["pred"]):
                ok = r["clean_pred"][pos] == r["labels"][pos]
                base_correct.append(ok and base_preds[pos] == r["labels"][pos])
                doubled_correct.append(ok and p2 == r["labels"][pos])
        if base_correct:
            spec = next(s for s in specs if s.label == label)
            steps_check[label] = {
                "steps": spec.settings().get("steps", getattr(spec.attack, "steps", None)),
                "doubled_steps": doubled,
                "num_samples": len(base_correct),
                "accuracy": sum(base_correct) / len(base_correct),
                "doubled_accuracy": sum(doubled_correct) / len(doubled_correct),
            }
    return steps_check


def _forward_checks(
    records: list[dict[str, Any]], options: EvaluationOptions, n: int
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The determinism and input-gradient checks' numbers (``None`` when not run)."""
    determinism = None
    if options.check_determinism:
        determinism = {
            "max_abs_diff": max(r["determinism"]["max_abs_diff"] for r in records),
            "prediction_changed_fraction": sum(r["determinism"]["pred_changed"] for r in records) / n,
        }
    gradients = None
    if options.check_gradients:
        norms = [v for r in records for v in r["grad_norm"]]
        bad = [v is None or v == 0.0 for v in norms]
        finite = sorted(v for v in norms if v is not None)
        gradients = {
            "bad_fraction": sum(bad) / n,
            "num_samples": n,
            "median_norm": finite[len(finite) // 2] if finite else None,
        }
    return determinism, gradients


def _per_sample(
    records: list[dict[str, Any]],
    specs: list[AttackSpec],
    labels: list[int],
    worst: list[bool],
    out: dict[str, Any],
) -> dict[str, Any]:
    """Per-sample predictions (and routing diagnostics when computed) for ``return_per_sample``."""
    per_sample: dict[str, Any] = {
        "index": [i for r in records for i in r["indices"]],
        "label": labels,
        "clean_prediction": [p for r in records for p in r["clean_pred"]],
        "predictions": {s.label: [p for r in records for p in r["attacks"][s.label]["pred"]] for s in specs},
        "worst_case_correct": worst,
    }
    if out["routing_change"]:
        per_sample["routing_change"] = {
            a: [mean_of(row) for r in records for row in r["attacks"][a]["routing_change"]]
            for a in out["routing_change"]
        }
        per_sample["router_lipschitz"] = {
            a: [v for r in records for v in r["attacks"][a]["router_lipschitz"]] for a in out["router_lipschitz"]
        }
    return per_sample
