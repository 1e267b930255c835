"""The reproduction's clips: MovingShapes at the sizes of [`Settings`], or, in validation mode, the train split cut
into training and validation clips."""

from __future__ import annotations

from datasets import DatasetDict

from ..data import hold_out_validation, make_moving_shapes
from .recipes import Settings, log


def reproduction_data(settings: Settings) -> DatasetDict:
    """``train`` and ``test`` splits of the run. With ``settings.eval_split == "validation"`` every model trains on the
    first 80 % of the train split and is evaluated on its last 20 %, in the role of the test clips, which that mode
    never reads."""
    s = settings
    log(
        f"MovingShapes: {s.num_videos} clips, {s.num_frames} frames, {s.image_size}x{s.image_size}, "
        f"{s.difficulty}, data seed {s.data_seed}"
    )
    data = make_moving_shapes(
        s.num_videos, num_frames=s.num_frames, image_size=s.image_size, seed=s.data_seed, difficulty=s.difficulty
    )
    if s.eval_split == "validation":
        train, validation = hold_out_validation(data["train"])
        data = DatasetDict(train=train, test=validation)
        log(f"validation mode: {len(train)} training clips, {len(validation)} validation clips (test unused)")
    return data
