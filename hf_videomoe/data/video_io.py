"""Reading and writing video clips with PyAV; the one definition of frame sampling, resize, crop and rescale.

`read_video` hands the model exactly the pixels that transformers' video processor (``VideoMAEVideoProcessor``, what
``pipeline("video-classification")`` and ``AutoVideoProcessor`` use where torchvision is installed) computes from the
processor config written into every checkpoint (see `hf_videomoe.models.processing`):

1. **Sampling**: ``indices = arange(n) * T // n`` for ``n`` frames out of ``T`` (transformers'
   ``default_sample_indices_fn``).
2. **Resize**: the shorter side to ``image_size``, the longer one to ``int(image_size * long / short)``
   (transformers' ``get_resize_output_image_size``), bilinear with antialiasing, rounded to 8-bit levels as a uint8
   resize does.
3. **Crop**: the central ``image_size x image_size`` square, offsets ``(side - image_size) // 2``.
4. **Rescale**: divide by 255 (no normalisation: the model normalises with its own ``image_mean`` / ``image_std``).

torchvision's resize is the same aten kernel (``F.interpolate(..., antialias=True)``), so the two agree to within one
8-bit level. Torchvision itself is not needed here: its CPU wheels do not load with every torch build.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import BinaryIO, Literal, Union

import av
import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp"}
)
"""File extensions (lower case) treated as videos when scanning folders."""

SAMPLING_MODES: tuple[str, ...] = ("uniform", "random", "segment")

SamplingMode = Literal["uniform", "random", "segment"]


class VideoDecodeError(ValueError):
    """Raised when a file cannot be opened or decoded as a video."""


def sample_frame_indices(
    num_available: int,
    num_frames: int,
    sampling: SamplingMode = "uniform",
    rng: np.random.Generator | None = None,
    train: bool = False,
) -> np.ndarray:
    """Choose which frames of a video make up a clip.

    Indices are always sorted, so the clip keeps the video's frame order. A video shorter than `num_frames` is
    padded by repeating frames: every mode computes its indices over the available frames and some of them
    repeat (uniform sampling of 8 frames from 4 gives ``[0, 0, 1, 1, 2, 2, 3, 3]``). transformers' video processor
    refuses such short videos instead.

    Args:
        num_available (`int`): Number of frames in the video (at least 1).
        num_frames (`int`): Number of frames in the clip (at least 1).
        sampling (`str`, *optional*, defaults to `"uniform"`):
            - `"uniform"`: ``arange(num_frames) * num_available // num_frames``, the frames transformers' video
              processor samples (deterministic).
            - `"random"`: sorted random frames, without repetition when the video is long enough.
            - `"segment"`: TSN-style; the video is cut into `num_frames` equal segments and one frame is taken
              from each, at random when `train` is set and from the middle of the segment otherwise.
        rng (`numpy.random.Generator`, *optional*):
            Source of randomness for `"random"` and training `"segment"` sampling. Defaults to a fresh unseeded
            generator.
        train (`bool`, *optional*, defaults to `False`): Whether `"segment"` sampling draws random offsets.

    Returns:
        `np.ndarray`: `num_frames` sorted int64 indices in `[0, num_available)`.
    """
    if num_available < 1:
        raise ValueError(f"Cannot sample frames from a video with {num_available} frames.")
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
    if sampling == "uniform":
        indices = np.arange(num_frames, dtype=np.int64) * num_available // num_frames
    elif sampling == "random":
        rng = rng if rng is not None else np.random.default_rng()
        if num_available >= num_frames:
            indices = rng.choice(num_available, size=num_frames, replace=False)
        else:
            extra = rng.choice(num_available, size=num_frames - num_available, replace=True)
            indices = np.concatenate([np.arange(num_available), extra])
        indices = np.sort(indices)
    elif sampling == "segment":
        starts = np.arange(num_frames) * num_available / num_frames
        if train:
            rng = rng if rng is not None else np.random.default_rng()
            offsets = rng.random(num_frames)
        else:
            offsets = np.full(num_frames, 0.5)
        indices = np.floor(starts + offsets * num_available / num_frames)
    else:
        raise ValueError(f"`sampling` must be one of {SAMPLING_MODES}, got {sampling!r}.")
    return np.clip(indices, 0, num_available - 1).astype(np.int64)


def _video_stream(container):
    if not container.streams.video:
        raise VideoDecodeError(f"{container.name} has no video stream.")
    return container.streams.video[0]


VideoSource = Union[str, os.PathLike, bytes, BinaryIO]
"""A video file path, its encoded bytes, or a binary file object (e.g. a `datasets` ``Video(decode=False)`` row's
``bytes``)."""


def _describe(path: VideoSource) -> str:
    """How errors name a video: its path, never the bytes of an in-memory one."""
    if isinstance(path, (bytes, bytearray)):
        return f"<{len(path)} bytes of video>"
    return f"<{type(path).__name__}>" if hasattr(path, "read") else str(path)


def _open(path: VideoSource):
    try:
        if isinstance(path, (bytes, bytearray)):
            return av.open(io.BytesIO(path))
        if hasattr(path, "read"):
            path.seek(0)  # the clip is opened more than once (frame count, then decoding)
            return av.open(path)
        return av.open(os.fspath(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoDecodeError(f"Could not open {_describe(path)} as a video: {error}") from error


def probe_video(path: str | os.PathLike) -> int:
    """Check cheaply that `path` is a decodable video: open it and decode its first frame.

    Returns:
        `int`: The frame count stored in the container, or 0 when the container does not record it.

    Raises:
        VideoDecodeError: If the file is not a video or its first frame cannot be decoded.
    """
    with _open(path) as container:
        try:
            stream = _video_stream(container)
            for _ in container.decode(stream):
                return max(stream.frames, 0)
        except av.FFmpegError as error:
            raise VideoDecodeError(f"Could not decode {_describe(path)}: {error}") from error
    raise VideoDecodeError(f"{_describe(path)} contains no decodable frame.")


def _decode_selected(path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int, bool]:
    """Decode frames in order, keeping RGB arrays of the `wanted` indices.

    Returns the kept frames, how many frames were decoded and whether the end of the stream was reached.
    """
    last = max(wanted)
    frames = {}
    count = 0
    with _open(path) as container:
        try:
            stream = _video_stream(container)
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if count in wanted:
                    frames[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if count > last:
                    return frames, count, False
        except av.FFmpegError as error:
            raise VideoDecodeError(f"Could not decode {_describe(path)}: {error}") from error
    return frames, count, True


def _count_frames(path) -> int:
    """Frame count from the container, or by demuxing packets (no decoding) when it records none."""
    with _open(path) as container:
        try:
            stream = _video_stream(container)
            if stream.frames > 0:
                return stream.frames
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as error:
            raise VideoDecodeError(f"Could not read {_describe(path)}: {error}") from error


def resize_output_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Frame size after resizing the shorter side to `image_size`, as transformers computes it.

    The longer side becomes ``int(image_size * long / short)`` (``get_resize_output_image_size`` with
    ``default_to_square=False``), so a 320 x 240 frame resized for 224 becomes 298 x 224 (width x height).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = image_size, int(image_size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


RESAMPLE_MODES: tuple[str, ...] = ("bilinear", "bicubic")
RESAMPLE_CODES: dict[int, str] = {2: "bilinear", 3: "bicubic"}
"""Processor configs' ``resample`` codes (PIL's) of the modes [`resize_frames`] implements."""


def resize_frames(
    frames: torch.Tensor, image_size: int, shortest_edge: int | None = None, resample: str = "bilinear"
) -> torch.Tensor:
    """Resize the shorter side to `shortest_edge`, centre-crop ``image_size x image_size`` and rescale to ``[0, 1]``.

    This is the resize / crop / rescale of transformers' video processor for the config written with every checkpoint
    (``size={"shortest_edge": image_size}``, ``crop_size=image_size``, bilinear, ``rescale_factor=1/255``, no
    normalisation): bilinear with antialiasing, rounded to 8-bit levels, then the central square with offsets
    ``(side - image_size) // 2``.

    Args:
        frames (`torch.Tensor`): ``(frames, channels, height, width)``, uint8, or float in ``[0, 1]`` (float frames are
            resized in 8-bit units and rounded like uint8 ones).
        image_size (`int`): Output height and width.
        shortest_edge (`int`, *optional*): Length of the shorter side after resizing (e.g. 256 to crop 224 from it);
            defaults to `image_size`. The checkpoint's processor config records it as ``size["shortest_edge"]``.
        resample (`str`, *optional*, defaults to `"bilinear"`): `"bilinear"` or `"bicubic"` (the processor's
            ``resample`` 2 or 3).

    Returns:
        `torch.Tensor`: float32 ``(frames, channels, image_size, image_size)`` in ``[0, 1]``.
    """
    if frames.ndim != 4:
        raise ValueError(f"Expected frames of shape (frames, channels, height, width), got {tuple(frames.shape)}.")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive integer, got {image_size!r}.")
    shortest_edge = image_size if shortest_edge is None else shortest_edge
    if isinstance(shortest_edge, bool) or not isinstance(shortest_edge, int) or shortest_edge < image_size:
        raise ValueError(f"`shortest_edge` must be an integer >= image_size ({image_size}), got {shortest_edge!r}.")
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"`resample` must be one of {RESAMPLE_MODES}, got {resample!r}.")
    levels = frames.float() if frames.dtype == torch.uint8 else frames.float() * 255.0
    height, width = levels.shape[-2:]
    new_height, new_width = resize_output_size(height, width, shortest_edge)
    if min(new_height, new_width) < image_size:
        raise ValueError(
            f"Frames of {height}x{width} resized to {new_height}x{new_width} are smaller than {image_size}."
        )
    if (new_height, new_width) != (height, width):
        levels = F.interpolate(levels, size=(new_height, new_width), mode=resample, antialias=True, align_corners=False)
        levels = levels.round_().clamp_(0.0, 255.0)
    top, left = (new_height - image_size) // 2, (new_width - image_size) // 2
    levels = levels[..., top : top + image_size, left : left + image_size]
    return levels.div(255.0).contiguous()


def read_video(
    path: VideoSource,
    num_frames: int,
    image_size: int | None = None,
    sampling: SamplingMode = "uniform",
    rng: np.random.Generator | None = None,
    train: bool = False,
    shortest_edge: int | None = None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """Decode a clip of `num_frames` frames from a video with PyAV.

    Only the sampled frames are converted to RGB, and decoding stops after the last of them. See
    [`sample_frame_indices`] for the sampling modes and the padding of short videos. With the default uniform sampling
    and an `image_size`, the result equals what transformers' video processor computes from the processor config saved
    with every checkpoint (module docstring).

    Args:
        path (`str`, `os.PathLike`, `bytes` or a binary file object): The video.
        num_frames (`int`): Frames in the clip.
        image_size (`int`, *optional*): If given, the shorter side is resized to `image_size` and the central
            ``image_size x image_size`` square kept (see [`resize_frames`]).
        sampling (`str`, *optional*, defaults to `"uniform"`): `"uniform"`, `"random"` or `"segment"`.
        rng (`numpy.random.Generator`, *optional*): Randomness for the random sampling modes.
        train (`bool`, *optional*, defaults to `False`): Random (`True`) or central (`False`) segment offsets.
        shortest_edge, resample: The resize before the crop (see [`resize_frames`]); a checkpoint's values come from
            `hf_videomoe.data.decode_settings`.

    Returns:
        `torch.Tensor`: float32 ``(num_frames, 3, height, width)`` with values in ``[0, 1]``.

    Raises:
        VideoDecodeError: If the file cannot be opened or decoded.
    """
    total = _count_frames(path)
    indices = sample_frame_indices(max(total, 1), num_frames, sampling, rng, train)
    frames, decoded, reached_end = _decode_selected(path, set(indices.tolist()))
    if reached_end and decoded <= indices.max():
        # The container over-reported its length: sample again over the frames that really exist.
        if decoded == 0:
            raise VideoDecodeError(f"{_describe(path)} contains no decodable frame.")
        indices = sample_frame_indices(decoded, num_frames, sampling, rng, train)
        frames, _, _ = _decode_selected(path, set(indices.tolist()))
    clip = torch.from_numpy(np.stack([frames[i] for i in indices.tolist()])).permute(0, 3, 1, 2)
    if image_size is not None:
        return resize_frames(clip, image_size, shortest_edge, resample)
    return clip.float().div_(255.0).contiguous()


def _to_uint8_frames(clip) -> np.ndarray:
    """``(frames, 3, height, width)`` float in [0, 1] or uint8 -> ``(frames, height, width, 3)`` uint8."""
    clip = clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
    if clip.ndim != 4 or clip.shape[1] != 3:
        raise ValueError(f"Expected a clip of shape (frames, 3, height, width), got {clip.shape}.")
    if clip.dtype != np.uint8:
        clip = np.round(np.clip(clip, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(clip.transpose(0, 2, 3, 1))


def write_video(path: str | os.PathLike, clip, fps: int = 8, crf: int = 10, pix_fmt: str = "yuv444p") -> None:
    """Encode a clip as H.264 (libx264, 4:4:4 chroma by default) with PyAV.

    Full-resolution chroma keeps small coloured shapes sharp and, unlike 4:2:0, allows odd frame sizes; pass
    ``pix_fmt="yuv420p"`` for files like the ones cameras and most datasets hold.

    Args:
        path (`str` or `os.PathLike`): Output file, usually ending in ``.mp4``.
        clip (`torch.Tensor` or `np.ndarray`): ``(frames, 3, height, width)``, float in ``[0, 1]`` or uint8.
        fps (`int`, *optional*, defaults to 8): Frame rate.
        crf (`int`, *optional*, defaults to 10): x264 constant rate factor (0 is lossless, 23 is x264's default).
        pix_fmt (`str`, *optional*, defaults to `"yuv444p"`): Chroma layout (`"yuv420p"` needs even sizes).
    """
    frames = _to_uint8_frames(clip)
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"crf": str(crf)})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
