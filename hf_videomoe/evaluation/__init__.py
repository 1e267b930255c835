"""Evaluation: robustness evaluator and report, reliability flags, plots, Trainer / evaluate metrics, and inference
cost accounting (FLOPs, active parameters)."""

from .arguments import RobustnessArguments
from .attack_specs import ATTACK_PRESETS
from .cost import CostReport, count_cost, count_parameters, dense_equivalent_config
from .flags import FlagThresholds
from .report import ReliabilityFlag, RobustnessReport, format_eps
from .robustness import DEFAULT_ATTACKS, evaluate_robustness
from .trainer_metrics import (
    ROBUST_ACCURACY_METRIC_PATH,
    compute_metrics,
    load_robust_accuracy_metric,
    robust_accuracy_inputs,
)

__all__ = [
    "ATTACK_PRESETS",
    "DEFAULT_ATTACKS",
    "ROBUST_ACCURACY_METRIC_PATH",
    "CostReport",
    "FlagThresholds",
    "ReliabilityFlag",
    "RobustnessArguments",
    "RobustnessReport",
    "compute_metrics",
    "count_cost",
    "count_parameters",
    "dense_equivalent_config",
    "evaluate_robustness",
    "format_eps",
    "load_robust_accuracy_metric",
    "robust_accuracy_inputs",
]
