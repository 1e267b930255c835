# Copyright 2026 The hf_videomoe authors. Licensed under the Apache License, Version 2.0.
"""Robust accuracy: the per-sample worst case over attacks, as an `evaluate` metric that loads offline by path.

Ships inside the `hf_videomoe` package; load it with

    >>> import evaluate, hf_videomoe.evaluation as ev
    >>> metric = evaluate.load(ev.ROBUST_ACCURACY_METRIC_PATH)   # or ev.load_robust_accuracy_metric()
"""

import datasets
import evaluate

_DESCRIPTION = """
Robust accuracy over several attacks, AutoAttack-style: a sample counts as robust only if it is classified correctly
clean AND under every attack (the per-sample worst case). Each row of `predictions` holds the predicted class of one
sample: first on the clean input, then under each attack, in a fixed order. Clean and per-attack accuracies are
returned too (an attack's accuracy counts a sample only if it is correct clean and under that attack).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): one row per sample, `[clean_prediction, prediction_under_attack_1, ...]`.
        All rows have the same length (>= 1). A row of length 1 (no attack) gives robust_accuracy = clean_accuracy.
    references (`list` of `int`): the true label of each sample.
    attack_names (`list` of `str`, *optional*): names of the attack columns (row positions 1..); the per-attack
        accuracies are then returned under `accuracy_<name>`.
    sample_weight (`list` of `float`, *optional*): per-sample weights (defaults to 1).

Returns:
    robust_accuracy (`float`): fraction of samples correct clean and under every attack (the worst case).
    clean_accuracy (`float`): fraction correct on clean inputs.
    attack_accuracy (`list` of `float`): per-attack robust accuracy, in column order.
    accuracy_<name> (`float`): the same by name, when `attack_names` is given.
    num_samples (`int`): number of rows.

Examples:
    >>> metric = evaluate.load("path/to/robust_accuracy")
    >>> metric.compute(predictions=[[1, 1, 1], [2, 2, 0], [3, 0, 3]], references=[1, 2, 0])
    {'robust_accuracy': 0.333..., 'clean_accuracy': 0.666..., 'attack_accuracy': [0.666..., 0.333...], 'num_samples': 3}
"""

_CITATION = """
@inproceedings{croce2020reliable,
  title={Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks},
  author={Croce, Francesco and Hein, Matthias},
  booktitle={ICML},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RobustAccuracy(evaluate.Metric):
    """Per-sample worst-case accuracy over attacks."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2003.01690"],
        )

    def _compute(self, predictions, references, attack_names=None, sample_weight=None):
        if len(predictions) == 0:
            raise ValueError("robust_accuracy needs at least one sample.")
        width = len(predictions[0])
        if width == 0 or any(len(row) != width for row in predictions):
            raise ValueError(
                "Every row of `predictions` must have the same length >= 1: [clean_prediction, attack_1, ...]."
            )
        if attack_names is not None and len(attack_names) != width - 1:
            raise ValueError(f"Got {len(attack_names)} attack_names for {width - 1} attack columns.")
        weights = [1.0] * len(references) if sample_weight is None else [float(w) for w in sample_weight]
        if len(weights) != len(references):
            raise ValueError("sample_weight must have one weight per sample.")
        total = sum(weights)
        clean = [row[0] == ref for row, ref in zip(predictions, references)]
        per_attack = [
            sum(w for row, ref, ok, w in zip(predictions, references, clean, weights) if ok and row[j] == ref) / total
            for j in range(1, width)
        ]
        robust = sum(w for row, ref, w in zip(predictions, references, weights) if all(p == ref for p in row)) / total
        result = {
            "robust_accuracy": float(robust),
            "clean_accuracy": float(sum(w for ok, w in zip(clean, weights) if ok) / total),
            "attack_accuracy": [float(a) for a in per_attack],
            "num_samples": len(references),
        }
        if attack_names is not None:
            for name, acc in zip(attack_names, per_attack):
                result[f"accuracy_{name}"] = float(acc)
        return result
