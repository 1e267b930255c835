"""The reproduction's checkpoints on disk: saved with the SHA-256 fingerprint of their tensors in ``train.json``, and
loaded or retrained only to those weights.

The tracked cache keeps no weights (``CACHE_GITIGNORE``): a fresh clone retrains the checkpoints it needs, which gives
the recorded weights on any x86-64 CPU in reproducible mode (`hf_videomoe.reproducibility`) and otherwise only on the
same kind of machine. So both ways in are checked: a loaded checkpoint must carry the recorded weights, and a retrained
one (only its ``train.json`` was left) must come out with them. Results of other weights must not mix."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from ..evaluation.state import model_fingerprint
from .recipes import Settings, log, model_classes, read_json, write_json


def checkpoint_cached(model_dir: Path, info_path: Path) -> bool:
    return info_path.exists() and (model_dir / "model.safetensors").exists()


def load_checkpoint(model_dir: Path, info_path: Path, settings: Settings, *, dense: bool):
    """Load the dense or MoE model saved in ``model_dir``; raise if its weights are not those ``info_path`` records."""
    _, dense_cls, moe_cls = model_classes(settings.model_type)
    model = (dense_cls if dense else moe_cls).from_pretrained(model_dir)
    expected = read_json(info_path).get("weights_fingerprint")
    fingerprint = model_fingerprint(model)["weights_sha256"]
    if expected is not None and fingerprint != expected:
        raise RuntimeError(
            f"{model_dir} holds other weights than those recorded in {info_path} (fingerprint "
            f"{fingerprint[:12]} vs {expected[:12]}): the results that started from them would mix "
            "with new ones. Restore the recorded weights or use another --output-dir."
        )
    return model


def save_checkpoint(model, model_dir: Path, info_path: Path, info: dict) -> dict:
    """Save ``model`` and write ``info`` with the weights' fingerprint. Where ``info_path`` already exists (the weights
    were not kept and have just been retrained), the recorded file is kept and the new weights must have the recorded
    fingerprint; if not, nothing is saved and the run stops."""
    fingerprint = model_fingerprint(model)["weights_sha256"]
    if info_path.exists():
        recorded = read_json(info_path)
        expected = recorded.get("weights_fingerprint")
        if expected != fingerprint:
            raise RuntimeError(
                f"{model_dir} was retrained (only {info_path.name} was left) but "
                + (
                    f"came out with other weights than those recorded (fingerprint {fingerprint[:12]} vs "
                    f"{expected[:12]}; recorded with torch {recorded.get('torch')}, transformers "
                    f"{recorded.get('transformers', 'unrecorded')}): training is not reproducible "
                    "here (another machine, torch version or thread count?)"
                    if expected
                    else "its train.json records no weight fingerprint, so the retrained weights cannot be checked"
                )
                + ", and the cached results that started from it would mix with new ones. Use another --output-dir."
            )
        model.save_pretrained(model_dir)
        log(f"{model_dir}: retrained, same weights as recorded (fingerprint {fingerprint[:12]})")
        return recorded
    model.save_pretrained(model_dir)
    info = {
        **info,
        "weights_fingerprint": fingerprint,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(info_path, info)
    return info
