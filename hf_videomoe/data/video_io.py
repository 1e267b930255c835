"""Reading and writing video clips with PyAV, frame sampling and resizing with torch (no torchvision)."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Literal

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
    repeat (e.g. uniform sampling of 8 frames from 4 gives ``[0, 0, 1, 1, 2, 2, 3, 3]``-like indices).

    Args:
        num_available (`int`): Number of frames in the video (at least 1).
        num_frames (`int`): Number of frames in the clip (at least 1).
        sampling (`str`, *optional*, defaults to `"uniform"`):
            - `"uniform"`: evenly spaced frames from the first to the last (deterministic).
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
        indices = np.round(np.linspace(0, num_available - 1, num_frames))
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


def _open(path: str | os.PathLike):
    try:
        return av.open(os.fspath(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoDecodeError(f"Could not open {path} as a video: {error}") from error


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
            raise VideoDecodeError(f"Could not decode {path}: {error}") from error
    raise VideoDecodeError(f"{path} contains no decodable frame.")


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
            raise VideoDecodeError(f"Could not decode {path}: {error}") from error
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
            raise VideoDecodeError(f"Could not read {path}: {error}") from error


def resize_frames(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """Centre-crop frames to a square and resize them to ``image_size x image_size``.

    Args:
        frames (`torch.Tensor`): ``(frames, channels, height, width)`` float tensor.
        image_size (`int`): Output height and width.

    Returns:
        `torch.Tensor`: ``(frames, channels, image_size, image_size)``, bilinear with antialiasing, clamped to
        the input's value range ``[0, 1]``.
    """
    height, width = frames.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    frames = frames[..., top : top + side, left : left + side]
    if side != image_size:
        frames = F.interpolate(
            frames, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        frames = frames.clamp_(0.0, 1.0)
    return frames


def read_video(
    path: str | os.PathLike,
    num_frames: int,
    image_size: int | None = None,
    sampling: SamplingMode = "uniform",
    rng: np.random.Generator | None = None,
    train: bool = False,
) -> torch.Tensor:
    """Decode a clip of `num_frames` frames from a video file with PyAV.

    Only the sampled frames are converted to RGB, and decoding stops after the last of them. See
    [`sample_frame_indices`] for the sampling modes and the padding of short videos.

    Args:
        path (`str` or `os.PathLike`): Video file.
        num_frames (`int`): Frames in the clip.
        image_size (`int`, *optional*): If given, frames are centre-cropped to a square and resized to
            ``image_size x image_size`` (see [`resize_frames`]).
        sampling (`str`, *optional*, defaults to `"uniform"`): `"uniform"`, `"random"` or `"segment"`.
        rng (`numpy.random.Generator`, *optional*): Randomness for the random sampling modes.
        train (`bool`, *optional*, defaults to `False`): Random (`True`) or central (`False`) segment offsets.

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
            raise VideoDecodeError(f"{path} contains no decodable frame.")
        indices = sample_frame_indices(decoded, num_frames, sampling, rng, train)
        frames, _, _ = _decode_selected(path, set(indices.tolist()))
    clip = np.stack([frames[i] for i in indices.tolist()])
    clip = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255.0)
    if image_size is not None:
        clip = resize_frames(clip, image_size)
    return clip.contiguous()


def _to_uint8_frames(clip) -> np.ndarray:
    """``(frames, 3, height, width)`` float in [0, 1] or uint8 -> ``(frames, height, width, 3)`` uint8."""
    clip = clip.detach().cpu().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip)
    if clip.ndim != 4 or clip.shape[1] != 3:
        raise ValueError(f"Expected a clip of shape (frames, 3, height, width), got {clip.shape}.")
    if clip.dtype != np.uint8:
        clip = np.round(np.clip(clip, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(clip.transpose(0, 2, 3, 1))


def write_video(path: str | os.PathLike, clip, fps: int = 8, crf: int = 10) -> None:
    """Encode a clip as H.264 (libx264, 4:4:4 chroma) with PyAV.

    Full-resolution chroma keeps small coloured shapes sharp and, unlike 4:2:0, allows odd frame sizes.

    Args:
        path (`str` or `os.PathLike`): Output file, usually ending in ``.mp4``.
        clip (`torch.Tensor` or `np.ndarray`): ``(frames, 3, height, width)``, float in ``[0, 1]`` or uint8.
        fps (`int`, *optional*, defaults to 8): Frame rate.
        crf (`int`, *optional*, defaults to 10): x264 constant rate factor (0 is lossless, 23 is x264's default).
    """
    frames = _to_uint8_frames(clip)
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"crf": str(crf)})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
