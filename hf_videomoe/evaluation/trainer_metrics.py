"""Metrics for ``transformers.Trainer`` and the ``evaluate`` library."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .report import RobustnessReport

__all__ = ["ROBUST_ACCURACY_METRIC_PATH", "compute_metrics", "load_robust_accuracy_metric", "robust_accuracy_inputs"]

#: Folder of the ``robust_accuracy`` evaluate module shipped with the package: ``evaluate.load(path)`` works offline.
ROBUST_ACCURACY_METRIC_PATH = str(Path(__file__).resolve().parent / "metrics" / "robust_accuracy")


def _logits_from_predictions(predictions: Any, num_samples: int) -> np.ndarray:
    """Pick the logits out of Trainer predictions, which are a tuple when the model returns extra outputs
    (``aux_loss``, ``router_logits``, hidden states...): the first 2-D array with one row per sample."""
    if isinstance(predictions, (tuple, list)):
        candidates = [np.asarray(p) for p in predictions if p is not None and not isinstance(p, (tuple, list))]
        for array in candidates:
            if array.ndim == 2 and array.shape[0] == num_samples:
                return array
        raise ValueError(
            "compute_metrics could not find logits of shape (num_samples, num_labels) in the predictions tuple "
            f"(shapes: {[np.asarray(c).shape for c in candidates]})."
        )
    return np.asarray(predictions)


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy for ``Trainer(compute_metrics=compute_metrics)``.

    Accepts an ``EvalPrediction`` (or a ``(predictions, label_ids)`` tuple); predictions may be logits, a tuple whose
    first 2-D array is the logits (MoE models also return ``aux_loss`` and ``router_logits``), or already predicted
    class ids (1-D).

    Returns:
        ``{"accuracy": float}``.
    """
    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred
    if isinstance(labels, (tuple, list)) and labels and not np.isscalar(labels[0]):
        labels = labels[0]
    labels = np.asarray(labels).reshape(-1)
    logits = _logits_from_predictions(predictions, len(labels))
    preds = logits.argmax(-1) if logits.ndim > 1 else logits
    preds = np.asarray(preds).reshape(-1)
    if len(preds) != len(labels):
        raise ValueError(f"compute_metrics got {len(preds)} predictions for {len(labels)} labels.")
    valid = labels != -100  # Trainer pads labels with -100
    if not valid.any():
        return {"accuracy": float("nan")}
    return {"accuracy": float((preds[valid] == labels[valid]).mean())}


def load_robust_accuracy_metric(**kwargs):
    """``evaluate.load`` of the packaged ``robust_accuracy`` metric (no network needed); kwargs go to ``evaluate.load``."""
    import evaluate

    return evaluate.load(ROBUST_ACCURACY_METRIC_PATH, **kwargs)


def robust_accuracy_inputs(report: "RobustnessReport") -> dict[str, Any]:
    """``{"predictions", "references", "attack_names"}`` for the robust_accuracy metric, from a report evaluated with
    ``return_per_sample=True``."""
    if not report.per_sample:
        raise ValueError("The report has no per-sample results; evaluate with return_per_sample=True.")
    per_sample = report.per_sample
    attacks = list(report.attacks)
    rows = [
        [clean, *(per_sample["predictions"][a][i] for a in attacks)]
        for i, clean in enumerate(per_sample["clean_prediction"])
    ]
    return {"predictions": rows, "references": list(per_sample["label"]), "attack_names": attacks}
