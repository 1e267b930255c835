"""Resumable evaluation state: one checksummed JSON file per finished batch, next to the settings it was computed
with (plain JSON, never pickle)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import Distribution
from .output_folder import atomic_write_text

__all__ = ["STATE_FORMAT", "StateStore", "check_record", "expected_batches", "model_fingerprint"]

STATE_FORMAT = 2  # 2: every batch file carries checksums of its record and of the settings


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        data = tensor.detach().cpu().contiguous()
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "weights_sha256": digest.hexdigest()}


def diff_settings(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{path}: not in the saved state, now {current[key]!r}")
            elif key not in current:
                out.append(f"{path}: saved {saved[key]!r}, now absent")
            else:
                out.extend(diff_settings(saved[key], current[key], path))
        return out
    return [] if saved == current else [f"{prefix}: saved {saved!r}, now {current!r}"]


def sha256_of(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, allow_nan=True).encode()).hexdigest()


def expected_batches(num_samples: int | None, batch_size: int, labels: list[int] | None):
    """``index -> (dataset indices, labels)`` of a global batch as the dataset defines them (``None`` where unknown
    without loading), to cross-check a resumed batch file against the data rather than trust its checksum alone."""

    def expected(index: int) -> tuple[list[int] | None, list[int] | None]:
        if num_samples is None:
            return None, None
        start, stop = index * batch_size, min((index + 1) * batch_size, num_samples)
        indices = list(range(start, max(start, stop)))
        return indices, (None if labels is None else [int(v) for v in labels[start:stop]])

    return expected


def check_record(record: dict[str, Any], indices: Any, labels: Any, attacks: list[str] | None) -> None:
    """`ValueError` saying how ``record`` disagrees with the dataset's ``indices`` / ``labels`` of its batch (``None``
    where unknown) or with itself (prediction counts, the evaluated attacks)."""
    if indices is not None and list(record["indices"]) != list(indices):
        raise ValueError(f"its indices {record['indices'][:8]} are not the batch's dataset indices {list(indices)[:8]}")
    if labels is not None:
        labels = labels.tolist() if isinstance(labels, torch.Tensor) else [int(v) for v in labels]
        if list(record["labels"]) != labels:
            wrong = [i for i, (a, b) in enumerate(zip(record["labels"], labels)) if a != b] or ["count"]
            raise ValueError(
                f"its labels {record['labels'][:8]} differ from the dataset's {labels[:8]} (at {wrong[:5]})"
            )
    n = len(record["labels"])
    if len(record["indices"]) != n or len(record["clean_pred"]) != n:
        raise ValueError(
            f"it has {len(record['indices'])} indices, {n} labels and {len(record['clean_pred'])} clean "
            "predictions; expected equal counts"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (*record["labels"], *record["clean_pred"])):
        raise ValueError("its labels / clean predictions are not all integers")
    if attacks is not None and sorted(record["attacks"]) != sorted(attacks):
        raise ValueError(f"it holds attacks {sorted(record['attacks'])}, expected {sorted(attacks)}")
    for name, entry in record["attacks"].items():
        if not isinstance(entry, dict) or len(entry.get("pred") or []) != n:
            raise ValueError(f"its attack {name!r} does not hold one prediction per sample ({n})")


class StateStore:
    """Per-batch JSON files under ``state_dir``; each carries a checksum of its record and of the settings it was
    computed with, so a file that is truncated, corrupt or edited is reported (with its path) and recomputed, never
    trusted."""

    def __init__(self, state_dir: str | Path, settings: dict[str, Any], dist: Distribution):
        self.root = Path(state_dir)
        self.batches_dir = self.root / "batches"
        self.settings_sha256 = sha256_of(settings)
        attacks = settings.get("attacks")
        self.attack_labels = [a[0] for a in attacks] if isinstance(attacks, list) else None
        settings_path = self.root / "settings.json"
        if dist.is_main:
            self.batches_dir.mkdir(parents=True, exist_ok=True)
            if not settings_path.exists():
                atomic_write_text(settings_path, json.dumps({"format": STATE_FORMAT, "settings": settings}, indent=2))
        dist.barrier()
        try:
            saved = json.loads(settings_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{settings_path} is unreadable or not JSON ({err}); delete the state_dir to start over.")
        if not isinstance(saved, dict):
            raise ValueError(
                f"{settings_path} does not hold an evaluation's settings (got {type(saved).__name__}); "
                "delete the state_dir to start over."
            )
        differences = diff_settings(saved.get("settings"), settings)
        if saved.get("format") != STATE_FORMAT or differences:
            raise ValueError(
                f"state_dir {str(self.root)!r} holds an evaluation with different settings, so its results cannot be "
                "reused:\n  - "
                + "\n  - ".join(differences or [f"state format {saved.get('format')}"])
                + "\nUse a new state_dir (or delete this one) to start over."
            )

    def _path(self, index: int) -> Path:
        return self.batches_dir / f"batch_{index:07d}.json"

    def _read(self, path: Path) -> dict[str, Any]:
        """The record in ``path``; `ValueError` saying what is wrong with the file otherwise."""
        try:
            envelope = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"unreadable or truncated ({type(err).__name__}: {err})") from err
        if not isinstance(envelope, dict) or not {"record", "record_sha256", "settings_sha256"} <= set(envelope):
            raise ValueError("not a batch file of this evaluator version (no checksums)")
        if envelope["settings_sha256"] != self.settings_sha256:
            raise ValueError("computed with other settings")
        if sha256_of(envelope["record"]) != envelope["record_sha256"]:
            raise ValueError("its content does not match its checksum (edited or corrupt)")
        record = envelope["record"]
        missing = {"batch", "indices", "labels", "clean_pred", "attacks"} - set(record)
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        return record

    def _reject(self, path: Path, err: Exception) -> None:
        warnings.warn(f"Evaluation state file {path} is not trusted and will be recomputed: {err}.", stacklevel=4)
        try:
            path.replace(path.with_suffix(".rejected"))
        except OSError:
            pass

    def done(self, rank: int = 0, world: int = 1, expected=None) -> set[int]:
        """Indices of this rank's batches whose files are intact and agree with the dataset (``expected``: see
        [`expected_batches`]); the others are reported and set aside for recomputation (each rank checks only its own
        batches, so no two processes touch the same file)."""
        out = set()
        for path in sorted(self.batches_dir.glob("batch_*.json")):
            try:
                index = int(path.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if index % world != rank:
                continue
            try:
                record = self._read(path)
                if record["batch"] != index:
                    raise ValueError(f"it holds batch {record['batch']}")
                check_record(record, *(expected(index) if expected else (None, None)), self.attack_labels)
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                self._reject(path, err)
                continue
            out.add(index)
        return out

    def load(self, index: int, batch: Any = None) -> dict[str, Any] | None:
        """The record of batch ``index``, cross-checked against ``batch`` (its dataset indices and, when loaded, its
        labels). A record that disagrees is set aside (``None``: recompute it) if the batch's data is loaded, else it
        raises `ValueError`."""
        path = self._path(index)
        record = self._read(path)
        if batch is None:
            return record
        try:
            check_record(record, batch.indices, batch.labels, self.attack_labels)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            if batch.pixel_values is None:
                raise ValueError(
                    f"Evaluation state file {path} does not match the dataset: {err}; delete it to "
                    "recompute that batch."
                ) from err
            self._reject(path, err)
            return None
        return record

    def save(self, record: dict[str, Any]) -> None:
        envelope = {"record": record, "record_sha256": sha256_of(record), "settings_sha256": self.settings_sha256}
        atomic_write_text(self._path(record["batch"]), json.dumps(envelope, allow_nan=True))
