"""The files next to a checkpoint that its model card is built from: the training record (the recipe the run used),
the robustness report, and what the card needs to know about the evaluation data.

Layout of a checkpoint folder written by ``hf-videomoe train`` / ``evaluate`` and the demo::

    MODEL/config.json, model.safetensors      the weights
    MODEL/training_recipe.json                the training record (`write_training_record`)
    MODEL/README.md                           the model card (demo; `hf-videomoe push` uploads a fresh one)
    MODEL/robustness/report.json              the robustness report (`hf-videomoe evaluate`, the demo)
    MODEL/robustness/card_inputs.json         dataset name and generator settings of that evaluation
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = [
    "CARD_INPUTS_FILENAME",
    "ROBUSTNESS_DIR",
    "TRAINING_RECIPE_FILENAME",
    "find_report",
    "is_hub_id",
    "read_card_inputs",
    "read_training_record",
    "write_card_inputs",
    "write_training_record",
]

TRAINING_RECIPE_FILENAME = "training_recipe.json"
CARD_INPUTS_FILENAME = "card_inputs.json"
ROBUSTNESS_DIR = "robustness"
#: Where a checkpoint's report is looked for, in order: `hf-videomoe evaluate` and the demo, then the layout that
#: `push_robust_checkpoint` and the trainers' `create_model_card` write.
REPORT_LOCATIONS = (f"{ROBUSTNESS_DIR}/report.json", "report.json")


def is_hub_id(name: Any) -> bool:
    """Whether ``name`` is a Hub model id (``"org/name"`` or ``"name"``) rather than a local path: a valid repo id that
    is not an existing file or folder and does not start like a path (``/``, ``.``, ``~``)."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".", "~")) or os.sep in name.replace("/", ""):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name).exists()


def _write_json(path: Path, value: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(value).__name__}.")
    return value


def write_training_record(
    folder: str | os.PathLike,
    training_recipe: Mapping[str, Any],
    *,
    base_model: str | None = None,
    **extra: Any,
) -> Path:
    """Write ``folder/training_recipe.json``: the recipe (the card's "Training recipe" table), the ``base_model`` when
    it is a Hub id, and ``extra`` entries (reproducibility record, weights fingerprint, ...)."""
    record = {"training_recipe": dict(training_recipe), **extra}
    if is_hub_id(base_model):
        record["base_model"] = base_model
    return _write_json(Path(folder) / TRAINING_RECIPE_FILENAME, record)


def read_training_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The training record of the checkpoint in ``folder`` (``{}`` when the run wrote none)."""
    return _read_json(Path(folder) / TRAINING_RECIPE_FILENAME) or {}


def write_card_inputs(
    report_dir: str | os.PathLike, dataset_name: str | None, dataset_kwargs: Mapping[str, Any] | None
) -> Path:
    """Write ``report_dir/card_inputs.json``: the evaluation data a card's reproduction snippet regenerates."""
    return _write_json(
        Path(report_dir) / CARD_INPUTS_FILENAME,
        {"dataset_name": dataset_name, "dataset_kwargs": dict(dataset_kwargs or {}) or None},
    )


def read_card_inputs(report_path: str | os.PathLike) -> dict[str, Any]:
    """The card inputs written next to the report at ``report_path`` (``{}`` when there are none)."""
    return _read_json(Path(report_path).parent / CARD_INPUTS_FILENAME) or {}


def find_report(model_dir: str | os.PathLike) -> Path | None:
    """The robustness report of the checkpoint in ``model_dir``: ``robustness/report.json`` (``hf-videomoe evaluate``,
    the demo), else ``report.json``; ``None`` when neither exists."""
    for relative in REPORT_LOCATIONS:
        path = Path(model_dir) / relative
        if path.is_file():
            return path
    return None
