"""The ``model-index`` of a robustness card: the metrics [`build_model_card`] writes into its YAML header and
[`metrics_from_model_card`] reads back."""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import EvalResult, ModelCard

from ..evaluation.formatting import format_eps, norm_symbol
from ..evaluation.report import RobustnessReport

__all__ = ["check_card_metrics", "eval_results", "metrics_from_model_card", "report_metrics"]

# The task and the ``metric_config`` names the card writes and [`metrics_from_model_card`] looks for.
TASK_TYPE = "video-classification"
TASK_NAME = "Video Classification"
CLEAN_CONFIG = "clean"
WORST_CASE_CONFIG = "worst-case"


def check_card_metrics(report: RobustnessReport) -> None:
    """Refuse to publish an accuracy that is not a finite number in [0, 1] (a card would show "-300.0 %" or write
    ``.nan`` into its model-index), nor one from a report that fails its own validation (an edited report.json)."""
    report.validate()
    metrics = {"clean_accuracy": report.clean_accuracy, "worst_case_accuracy": report.worst_case_accuracy}
    metrics.update({f"robust_accuracy[{attack!r}]": value for attack, value in report.robust_accuracy.items()})
    for attack in report.attacks:
        if attack not in report.robust_accuracy:
            raise ValueError(f"The report lists attack {attack!r} but has no robust_accuracy for it.")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(
                f"Cannot build a model card from a report whose {name} is {value!r}: accuracies must be finite numbers "
                "in [0, 1]. Was the report edited, or the evaluation interrupted?"
            )


def report_metrics(report: RobustnessReport) -> dict[str, Any]:
    """The metrics a robustness card publishes, in the structure [`metrics_from_model_card`] returns:
    ``{"clean_accuracy": float, "worst_case_accuracy": float, "robust_accuracy": {attack: float}}``."""
    out = {
        "clean_accuracy": report.clean_accuracy,
        "worst_case_accuracy": report.worst_case_accuracy,
        "robust_accuracy": dict(report.robust_accuracy),
    }
    others = _other_budgets(report)
    if others:  # attacks at other budgets than the headline: a worst case per budget, key "worst-case@<norm>:<eps>"
        out["worst_case_by_budget"] = {f"{WORST_CASE_CONFIG}@{key}": entry["accuracy"] for key, entry in others.items()}
    return out


def _other_budgets(report: RobustnessReport) -> dict[str, dict[str, Any]]:
    headline = report.worst_case_attacks
    return {k: e for k, e in report.worst_case_by_budget.items() if list(e["attacks"]) != headline}


def eval_results(
    report: RobustnessReport, dataset_name: str, dataset_type: str, dataset_split: str | None
) -> list[EvalResult]:
    """The card's ``model-index`` entries, one ``accuracy`` result each: the worst case over all attacks first (the
    headline), then clean accuracy, each attack (``metric_config`` = its name), and the worst case of every other
    budget (``metric_config`` = ``"worst-case@<norm>:<eps>"``)."""
    common = dict(
        task_type=TASK_TYPE,
        task_name=TASK_NAME,
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        metric_type="accuracy",
    )
    eps_label = f"{norm_symbol(report.norm)} ε={format_eps(report.eps, report.norm)}"
    results = [
        EvalResult(
            **common,
            metric_value=float(report.worst_case_accuracy),
            metric_name=f"Worst-case robust accuracy ({len(report.worst_case_attacks)} attacks, {eps_label})",
            metric_config=WORST_CASE_CONFIG,
            metric_args={
                "attacks": report.worst_case_attacks,
                "norm": report.norm,
                "eps": float(report.eps),
                "num_samples": int(report.num_samples),
                "seed": report.seed,
            },
        ),
        EvalResult(
            **common,
            metric_value=float(report.clean_accuracy),
            metric_name="Clean accuracy",
            metric_config=CLEAN_CONFIG,
            metric_args={"num_samples": int(report.num_samples)},
        ),
    ]
    for attack in report.attacks:
        settings = report.attack_settings.get(attack, {})
        args: dict[str, Any] = {
            "attack": settings.get("name", attack),
            "norm": settings.get("norm", report.norm),
            "eps": float(settings.get("eps", report.eps)),
        }
        for key in ("steps", "step_size", "seed", "restarts"):
            value = settings.get(key)
            if isinstance(value, (int, float, str, bool)):
                args[key] = value
        args["num_samples"] = int(report.num_samples)
        name = f"Robust accuracy ({report.attack_label(attack)})"
        if report.is_cumulative(attack):  # accuracy after this attack and every earlier one, not under it alone
            args["mode"] = "cascade"
            name = f"Robust accuracy after {report.attack_label(attack)} (cascade: with every earlier attack)"
        results.append(
            EvalResult(
                **common,
                metric_value=float(report.robust_accuracy[attack]),
                metric_name=name,
                metric_config=attack,
                metric_args=args,
            )
        )
    for key, entry in _other_budgets(report).items():  # never one worst case across two budgets
        label = f"{norm_symbol(entry['norm'])} ε={format_eps(entry['eps'], entry['norm'])}"
        results.append(
            EvalResult(
                **common,
                metric_value=float(entry["accuracy"]),
                metric_config=f"{WORST_CASE_CONFIG}@{key}",
                metric_name=f"Worst-case robust accuracy ({len(entry['attacks'])} attacks, {label})",
                metric_args={
                    "attacks": list(entry["attacks"]),
                    "norm": entry["norm"],
                    "eps": float(entry["eps"]),
                    "num_samples": int(report.num_samples),
                    "seed": report.seed,
                },
            )
        )
    return results


def metrics_from_model_card(card: ModelCard | str | os.PathLike) -> dict[str, Any]:
    """Read the robustness metrics back from a card built by [`build_model_card`].

    Args:
        card: a ``ModelCard``, or anything ``ModelCard.load`` accepts (a README path, a repo id).

    Returns:
        ``{"clean_accuracy": float, "worst_case_accuracy": float, "robust_accuracy": {attack: float}}`` (the same
        structure as [`report_metrics`]).
    """
    if not isinstance(card, ModelCard):
        card = ModelCard.load(card)
    results = getattr(card.data, "eval_results", None) or []
    out: dict[str, Any] = {"clean_accuracy": None, "worst_case_accuracy": None, "robust_accuracy": {}}
    for result in results:
        if result.metric_type != "accuracy" or result.task_type != TASK_TYPE:
            continue
        if result.metric_config == CLEAN_CONFIG:
            out["clean_accuracy"] = result.metric_value
        elif result.metric_config == WORST_CASE_CONFIG:
            out["worst_case_accuracy"] = result.metric_value
        elif str(result.metric_config).startswith(f"{WORST_CASE_CONFIG}@"):
            out.setdefault("worst_case_by_budget", {})[result.metric_config] = result.metric_value
        elif result.metric_config:
            out["robust_accuracy"][result.metric_config] = result.metric_value
    if out["clean_accuracy"] is None and out["worst_case_accuracy"] is None and not out["robust_accuracy"]:
        raise ValueError("The model card has no hf_videomoe robustness metrics in its model-index.")
    return out
