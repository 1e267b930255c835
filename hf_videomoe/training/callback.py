"""The callback that keeps an adversarial run's bookkeeping in every checkpoint."""

from __future__ import annotations

import os

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["AdversarialTrainingCallback"]


class AdversarialTrainingCallback(TrainerCallback, ExportableState):
    """Bookkeeping of an adversarial run, saved in every checkpoint's ``trainer_state.json``.

    It records the method, how many optimizer steps included each phase (``phase_updates``, e.g. J-TLAT's router /
    expert / model steps or AdvMoE's alternation) and how many adversarial batches this process generated, and
    restores them when training resumes from a checkpoint (whatever `restore_callback_states_from_checkpoint` says,
    since they describe the run rather than a user setting). Nothing here influences the weights: the adversarial
    examples of a step are seeded from `(seed, global_step, micro-batch, process)`, so a resumed run replays the
    uninterrupted one exactly. The callback also remembers the last checkpoint saved, which the NaN guard reports.
    """

    def __init__(self, adv_method: str | None = None):
        self.adv_method = adv_method
        self.phase_updates: dict[str, int] = {}
        self.adversarial_batches = 0
        self.last_checkpoint: str | None = None

    def state(self) -> dict:
        return {
            "args": {"adv_method": self.adv_method},
            "attributes": {
                "phase_updates": dict(self.phase_updates),
                "adversarial_batches": self.adversarial_batches,
                "last_checkpoint": self.last_checkpoint,
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        callbacks = state.stateful_callbacks
        stored = callbacks.get(type(self).__name__) if isinstance(callbacks, dict) else None
        if isinstance(stored, list):
            stored = stored[0] if stored else None
        if not stored:
            return
        method = stored.get("args", {}).get("adv_method")
        if method is not None and method != self.adv_method:
            logger.warning(
                f"Resuming a checkpoint trained with adv_method={method!r} using adv_method={self.adv_method!r}."
            )
        attributes = stored.get("attributes", {})
        self.phase_updates = dict(attributes.get("phase_updates", {}))
        self.adversarial_batches = int(attributes.get("adversarial_batches", 0))
        self.last_checkpoint = attributes.get("last_checkpoint", self.last_checkpoint)

    def on_save(self, args, state, control, **kwargs):
        self.last_checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    def count_phase_updates(self, phase_names) -> None:
        """Count one optimizer step for each phase of ``phase_names`` (a fused ``"router+model"`` counts for both)."""
        for phase_name in phase_names:
            for name in phase_name.split("+"):
                self.phase_updates[name] = self.phase_updates.get(name, 0) + 1

    def last_good_checkpoint(self, output_dir: str) -> str | None:
        """The last checkpoint this run saved, else (a run resumed in ``output_dir``) the last one there."""
        checkpoint = self.last_checkpoint
        if checkpoint is None and os.path.isdir(output_dir):
            checkpoint = get_last_checkpoint(output_dir)
        return checkpoint


def live_adversarial_callback(callbacks, default: AdversarialTrainingCallback) -> AdversarialTrainingCallback:
    """The trainer's [`AdversarialTrainingCallback`] among ``callbacks`` (``default`` if none): looked up every time,
    because Trainer may replace callbacks when it restores their state from a checkpoint."""
    return next((callback for callback in callbacks if isinstance(callback, AdversarialTrainingCallback)), default)
