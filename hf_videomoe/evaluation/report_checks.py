"""What makes a [`RobustnessReport`] self-consistent, checked on construction, on load and before a model card is built:
types, accuracies in [0, 1], worst case ≤ every robust accuracy ≤ clean accuracy, one budget per worst case, and a
``format_version`` this library can read (older ones migrated, newer ones refused). Every error is one line naming
the field, the value and what was expected."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["REPORT_FORMAT_VERSION", "migrate_report_dict", "validate_report", "worst_case_budget"]

#: 2: ``mode`` (cascade reports carry cumulative robust accuracies); 3: ``worst_case_by_budget`` (a worst case per
#: (norm, ε) the attacks ran at) and validation on load.
REPORT_FORMAT_VERSION = 3
_TOLERANCE = 1e-9  # accuracies are ratios of counts: any excess beyond rounding is a contradiction
_NORMS = ("linf", "l2")


def migrate_report_dict(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without its ``format_version``, migrated to the current fields; a newer version is refused."""
    data = dict(data)
    version = data.pop("format_version", 1)  # reports written before the field existed are version 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"format_version must be a positive integer, got {version!r}")
    if version > REPORT_FORMAT_VERSION:
        raise ValueError(
            f"format_version {version} is newer than this hf_videomoe reads (up to "
            f"{REPORT_FORMAT_VERSION}); expected <= {REPORT_FORMAT_VERSION}: upgrade hf_videomoe to load it"
        )
    # 1 → 2: no `mode` (every attack ran on every sample: the default "full"). 2 → 3: no `worst_case_by_budget` (the
    # worst case spans every attack; validation below refuses it if their recorded budgets differ).
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _accuracy(name: str, value: Any) -> float:
    if not _is_number(value):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a finite accuracy in [0, 1], got {value!r}")
    return float(value)


def _mapping(name: str, value: Any) -> Mapping:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {value!r} ({type(value).__name__})")
    return value


def _optional_int(name: str, value: Any, minimum: int = 0) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise TypeError(f"{name} must be an integer >= {minimum} or None, got {value!r}")


def _budget_text(norm: Any, eps: Any) -> str:
    from .formatting import format_eps, norm_symbol

    return f"{norm_symbol(norm)} ε={format_eps(eps, norm) if _is_number(eps) else eps}"


def worst_case_budget(report) -> dict[str, Any]:
    """``{"norm", "eps", "attacks", "accuracy"}`` of the headline worst case (the entry of ``worst_case_by_budget`` at
    the report's own budget; every attack for reports that predate per-budget worst cases)."""
    entry = _headline_entry(report)
    if entry is not None:
        return dict(entry)
    return {
        "norm": report.norm,
        "eps": report.eps,
        "attacks": list(report.attacks),
        "accuracy": report.worst_case_accuracy,
    }


def _headline_entry(report) -> dict[str, Any] | None:
    for entry in (report.worst_case_by_budget or {}).values():
        if (
            isinstance(entry, Mapping)
            and entry.get("norm") == report.norm
            and _is_number(entry.get("eps"))
            and _is_number(report.eps)
            and math.isclose(entry["eps"], report.eps, rel_tol=1e-9)
        ):
            return dict(entry)
    return None


def _check_budget_entry(report, name: str, entry: Any) -> None:
    entry = _mapping(name, entry)
    missing = sorted({"norm", "eps", "attacks", "accuracy"} - set(entry))
    if missing:
        raise ValueError(f"{name} lacks {missing}; expected norm, eps, attacks and accuracy")
    if entry["norm"] not in _NORMS or not _is_number(entry["eps"]) or not entry["eps"] > 0:
        raise ValueError(
            f"{name} has budget norm={entry['norm']!r} eps={entry['eps']!r}; expected a norm in {_NORMS} "
            "and a positive eps"
        )
    accuracy = _accuracy(f"{name}['accuracy']", entry["accuracy"])
    attacks = entry["attacks"]
    if not isinstance(attacks, list) or not attacks or any(a not in report.attacks for a in attacks):
        raise ValueError(
            f"{name}['attacks'] is {attacks!r}; expected a non-empty list of the report's attacks {report.attacks}"
        )
    for attack in attacks:
        settings = report.attack_settings.get(attack) or {}
        norm, eps = settings.get("norm", entry["norm"]), settings.get("eps", entry["eps"])
        if norm != entry["norm"] or not _is_number(eps) or not math.isclose(eps, entry["eps"], rel_tol=1e-9):
            raise ValueError(
                f"{name} counts attack {attack!r}, which ran at {_budget_text(norm, eps)}, in a worst case at "
                f"{_budget_text(entry['norm'], entry['eps'])}; expected every attack of a worst case to share its budget"
            )
        if accuracy > report.robust_accuracy[attack] + _TOLERANCE:
            raise ValueError(
                f"{name}['accuracy'] is {accuracy!r}, above robust_accuracy[{attack!r}]="
                f"{report.robust_accuracy[attack]!r}; expected a worst case <= each of its attacks"
            )


def _check_types(report) -> None:
    if not isinstance(report.attacks, list) or not all(isinstance(a, str) for a in report.attacks):
        raise TypeError(f"attacks must be a list of attack names, got {report.attacks!r}")
    if isinstance(report.num_samples, bool) or not isinstance(report.num_samples, int) or report.num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {report.num_samples!r}")
    if not _is_number(report.eps) or not (math.isfinite(report.eps) and report.eps > 0):
        raise ValueError(f"eps must be a positive finite budget, got {report.eps!r}")
    if report.norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {report.norm!r}")
    if report.mode not in ("full", "cascade"):
        raise ValueError(f"mode must be 'full' or 'cascade', got {report.mode!r}")
    for name in (
        "steps",
        "seed",
        "batch_size",
        "flops",
        "dense_flops",
        "active_parameters",
        "total_parameters",
        "dense_parameters",
    ):
        _optional_int(name, getattr(report, name))
    for name in (
        "attack_settings",
        "attack_arguments",
        "eps_sweep",
        "frozen_routing",
        "steps_check",
        "worst_case_by_budget",
        "checks",
        "versions",
    ):
        _mapping(name, getattr(report, name))
    if not isinstance(report.flags, list) or not all(
        hasattr(f, "name") and hasattr(f, "message") for f in report.flags
    ):
        raise TypeError(f"flags must be a list of ReliabilityFlag, got {report.flags!r}")


def validate_report(report) -> None:
    """Raise `ValueError` / `TypeError` (one line: field, value, expectation) unless ``report`` is self-consistent."""
    _check_types(report)
    clean = _accuracy("clean_accuracy", report.clean_accuracy)
    worst = _accuracy("worst_case_accuracy", report.worst_case_accuracy)
    robust = _mapping("robust_accuracy", report.robust_accuracy)
    for attack in report.attacks:
        if attack not in robust:
            raise ValueError(
                f"attacks lists {attack!r} but robust_accuracy has no value for it; expected one robust "
                f"accuracy per attack, got robust_accuracy={dict(robust)!r}"
            )
    extra = sorted(set(robust) - set(report.attacks))
    if extra:
        raise ValueError(f"robust_accuracy has {extra}, which are not in attacks {report.attacks}")
    for attack, value in robust.items():
        if _accuracy(f"robust_accuracy[{attack!r}]", value) > clean + _TOLERANCE:
            raise ValueError(
                f"robust_accuracy[{attack!r}] is {value!r}, above clean_accuracy={clean!r}; expected "
                "robust <= clean (a robust sample is also correct clean)"
            )
    bad_exact = [a for a in report.exact_attacks if a not in report.attacks]
    if bad_exact:
        raise ValueError(f"exact_attacks {bad_exact} are not in attacks {report.attacks}")
    for key, entry in report.worst_case_by_budget.items():
        _check_budget_entry(report, f"worst_case_by_budget[{key!r}]", entry)
    headline = _headline_entry(report)
    if not report.worst_case_by_budget:  # an older report: its worst case spans every attack
        _check_budget_entry(report, "worst_case_accuracy (over all attacks)", worst_case_budget(report))
    elif headline is None:
        raise ValueError(
            f"worst_case_by_budget has no worst case at the report's budget "
            f"{_budget_text(report.norm, report.eps)} (it has {sorted(report.worst_case_by_budget)}); "
            "expected one entry per budget, the report's own included"
        )
    elif not math.isclose(headline["accuracy"], worst, abs_tol=_TOLERANCE):
        raise ValueError(
            f"worst_case_accuracy is {worst!r} but worst_case_by_budget gives {headline['accuracy']!r} at "
            f"{_budget_text(report.norm, report.eps)}; expected the same number"
        )
    for attack, curve in report.eps_sweep.items():
        for eps, value in _mapping(f"eps_sweep[{attack!r}]", curve).items():
            _accuracy(f"eps_sweep[{attack!r}][{eps!r}]", value)
    for attack, controls in report.frozen_routing.items():
        for key, value in _mapping(f"frozen_routing[{attack!r}]", controls).items():
            _accuracy(f"frozen_routing[{attack!r}][{key!r}]", value)
    for attack, info in report.steps_check.items():
        for key in ("accuracy", "doubled_accuracy"):
            _accuracy(f"steps_check[{attack!r}][{key!r}]", _mapping(f"steps_check[{attack!r}]", info).get(key))
