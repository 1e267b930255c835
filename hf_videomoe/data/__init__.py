"""Video classification data: the procedural MovingShapes benchmark, local video folders and batching.

All datasets yield ``pixel_values`` as float32 ``(frames, channels=3, height, width)`` in ``[0, 1]`` and
``labels`` as class ids of a `datasets.ClassLabel`.
"""

from .cache import PREPROCESSING_VERSION, cache_decoded_videos
from .collator import VideoCollator, to_unit_float
from .decode import LABEL_COLUMNS, VideoDecodeTransform, decode_settings, decode_video_dataset
from .moving_shapes import (
    DIFFICULTY_LEVELS,
    MOVING_SHAPES_CLASSES,
    MOVING_SHAPES_SHAPES,
    make_moving_shapes,
    paired_class,
)
from .sources import stack_pixel_values
from .splits import hold_out_validation
from .video_folder import LAYOUTS, load_video_folder, write_video_folder
from .video_io import (
    RESAMPLE_MODES,
    SAMPLING_MODES,
    VIDEO_EXTENSIONS,
    VideoDecodeError,
    probe_video,
    read_video,
    resize_frames,
    sample_frame_indices,
    write_video,
)

__all__ = [
    "DIFFICULTY_LEVELS",
    "LABEL_COLUMNS",
    "LAYOUTS",
    "RESAMPLE_MODES",
    "MOVING_SHAPES_CLASSES",
    "MOVING_SHAPES_SHAPES",
    "PREPROCESSING_VERSION",
    "SAMPLING_MODES",
    "VIDEO_EXTENSIONS",
    "VideoCollator",
    "stack_pixel_values",
    "VideoDecodeError",
    "VideoDecodeTransform",
    "cache_decoded_videos",
    "decode_settings",
    "decode_video_dataset",
    "hold_out_validation",
    "load_video_folder",
    "make_moving_shapes",
    "paired_class",
    "probe_video",
    "read_video",
    "resize_frames",
    "sample_frame_indices",
    "to_unit_float",
    "write_video",
    "write_video_folder",
]
