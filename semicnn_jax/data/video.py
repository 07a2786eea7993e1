"""Video files -> uint8 frames, and the clip preprocessing shared by training, evaluation and prediction.

Decoding uses PyAV (FFmpeg) with one decoder thread: parallelism comes from loader workers, one
process per core. Frames are RGB ``uint8 [T, H, W, 3]``. Temporal loop padding follows Hara et al.
(the clip's own frames repeat until it is ``num_frames`` long). Spatial crops are square boxes of
the short side resized to ``crop_size`` by FFmpeg's swscale (bilinear, one thread, plane by plane):
the same pixels as Pillow's bilinear resize within rounding, at a quarter of the cost.
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Multi-scale crops of the paper (Hara et al.): fractions of the short side, and where the box sits.
CROP_SCALES = (1.0, 2 ** -0.25, 2 ** -0.5, 2 ** -0.75, 0.5)
CROP_POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")


class VideoError(ValueError):
    """A video that cannot be read; ``path`` names the file, the message says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# What reading a damaged file may raise besides VideoError (loaders mask these; other errors are bugs).
READ_ERRORS = (ValueError, OSError, EOFError, MemoryError, av.FFmpegError)

# ---------------------------------------------------------------------------- decoding

_local = threading.local()


def _reformatter() -> VideoReformatter:
    """A per-thread swscale context, reused across frames (building one per frame costs more than scaling)."""
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return _local.reformatter


def _rgb(frame: av.VideoFrame, size: int | None = None) -> np.ndarray:
    """``frame`` as RGB ``uint8 [H, W, 3]``, resized to ``size x size`` if given."""
    return _reformatter().reformat(frame, size, size, format="rgb24", interpolation="BILINEAR",
                                   threads=1).to_ndarray()


def _open(path: str):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(path, f"not a readable video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # no frame threads: one core per loader worker
    stream.codec_context.thread_count = 1
    return container, stream


def read_video(path: str) -> np.ndarray:
    """All frames of a video file as RGB ``uint8 [T, H, W, 3]`` (T >= 1); VideoError if unreadable.

    A stream that breaks after some frames (a truncated file) keeps the frames decoded so far.
    """
    container, stream = _open(path)
    frames = []
    with container:
        try:
            for frame in container.decode(stream):
                frames.append(_rgb(frame))
        except (av.FFmpegError, OSError) as e:
            if not frames:
                raise VideoError(path, f"decoding failed ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoError(path, "no decodable frames")
    return np.stack(frames)


def probe_num_frames(path: str) -> int:
    """Number of frames from the container header (0 if the header does not say); VideoError if unreadable."""
    container, stream = _open(path)
    with container:
        return int(stream.frames or 0)


def _decode_range(container, stream, first: int, last: int) -> list[np.ndarray] | None:
    """RGB frames ``first..last`` (indices from timestamps), seeking to the keyframe before ``first``;
    None when the stream does not allow it (no timestamps, a gap, a decoding error, too few frames)."""
    rate, time_base, t0 = stream.average_rate or stream.guessed_rate, stream.time_base, stream.start_time or 0
    if not rate or not time_base:
        return None
    out = []
    try:
        if first > 0:
            container.seek(t0 + round(first / rate / time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            i = round((frame.pts - t0) * time_base * rate)
            if i < first:
                continue
            if i != first + len(out):
                return None
            out.append(_rgb(frame))
            if i == last:
                return out
    except (av.FFmpegError, OSError):
        return None
    return None


def read_clip(path: str, num_frames: int, position: float) -> np.ndarray:
    """The ``num_frames``-frame clip at relative ``position`` in [0, 1) (see ``clip_start``), loop-padded,
    as RGB ``uint8 [num_frames, H, W, 3]``: equal to ``read_video(path)`` indexed by the clip's frames,
    but decoded only from the keyframe before the clip to its last frame.

    Falls back to decoding the whole file when the header's frame count or the timestamps cannot be
    trusted; VideoError if unreadable.
    """
    container, stream = _open(path)
    with container:
        length = int(stream.frames or 0)
        if length > 0:
            start = clip_start(length, num_frames, position)
            idx = loop_indices(start, num_frames, length)
            frames = _decode_range(container, stream, start, int(idx.max()))
            if frames is not None:
                return np.stack(frames)[idx - start]
    frames = read_video(path)
    return frames[loop_indices(clip_start(len(frames), num_frames, position), num_frames, len(frames))]


# ---------------------------------------------------------------------------- temporal sampling


def loop_indices(start: int, num_frames: int, length: int) -> np.ndarray:
    """``num_frames`` frame indices from ``start``; past the end of a ``length``-frame video the clip's
    own frames repeat (Hara's LoopPadding)."""
    available = max(1, min(num_frames, length - start))
    return start + np.arange(num_frames) % available


def clip_start(length: int, num_frames: int, position: float) -> int:
    """The start of the clip at relative ``position`` in [0, 1): uniform over ``[0, max(0, length -
    num_frames)]`` when ``position`` is uniform."""
    positions = max(length - num_frames, 0) + 1
    return min(int(position * positions), positions - 1)


def eval_clip_starts(length: int, num_frames: int) -> np.ndarray:
    """Starts of the non-overlapping clips covering a ``length``-frame video (at least one)."""
    return np.arange(0, max(length, 1), num_frames)


def num_eval_clips(length: int, num_frames: int) -> int:
    return len(eval_clip_starts(length, num_frames))


# ---------------------------------------------------------------------------- spatial crops


def crop_box(height: int, width: int, scale: float = 1.0, position: str = "center") -> tuple[int, int, int, int]:
    """A square ``(left, top, right, bottom)`` box of side ``scale x short side`` at ``position``."""
    if position not in CROP_POSITIONS:
        raise ValueError(f"crop position {position!r} is unknown; valid: {', '.join(CROP_POSITIONS)}")
    side = max(1, int(min(height, width) * scale))
    x = {"center": (width - side) // 2, "top_left": 0, "bottom_left": 0}.get(position, width - side)
    y = {"center": (height - side) // 2, "top_left": 0, "top_right": 0}.get(position, height - side)
    return x, y, x + side, y + side


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(plane, format="gray")
    return _reformatter().reformat(frame, size, size, format="gray", interpolation="BILINEAR",
                                   threads=1).to_ndarray()


def crop_resize(frames: np.ndarray, box: Sequence[int], size: int, flip: bool = False) -> np.ndarray:
    """``box`` of each frame of ``uint8 [T, H, W, 3]`` resized to ``[T, size, size, 3]``, mirrored if ``flip``.

    Each colour plane is scaled on its own (swscale's packed-RGB path converts to YUV and back, at
    twice the cost).
    """
    left, top, right, bottom = box
    planes = np.ascontiguousarray(np.moveaxis(np.asarray(frames)[:, top:bottom, left:right], -1, 1))
    out = np.empty(planes.shape[:2] + (size, size), np.uint8)
    for t, c in np.ndindex(*planes.shape[:2]):  # one swscale call per plane
        out[t, c] = _resize_plane(planes[t, c], size)
    return np.ascontiguousarray(np.moveaxis(out[..., ::-1] if flip else out, 1, -1))


def eval_clips(frames: np.ndarray, num_frames: int, crop_size: int) -> np.ndarray:
    """Evaluation preprocessing: all non-overlapping clips of a video (the last loop-padded), centre crop
    of the short side resized to ``crop_size``: ``uint8 [K, num_frames, crop_size, crop_size, 3]``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T>=1, H, W, 3], got shape {frames.shape}")
    length, height, width = frames.shape[:3]
    resized = crop_resize(frames.astype(np.uint8, copy=False), crop_box(height, width), crop_size)
    idx = np.stack([loop_indices(s, num_frames, length) for s in eval_clip_starts(length, num_frames)])
    return resized[idx]


# ---------------------------------------------------------------------------- training augmentation


def train_params(rng: np.random.Generator) -> dict:
    """The random choices of one training clip (paper 4.1): relative start, crop scale and position, flip."""
    return {"position": float(rng.random()), "scale": CROP_SCALES[rng.integers(len(CROP_SCALES))],
            "corner": CROP_POSITIONS[rng.integers(len(CROP_POSITIONS))], "flip": bool(rng.random() < 0.5)}


def train_clip(frames: np.ndarray, params: dict, crop_size: int) -> np.ndarray:
    """Multi-scale corner crop + resize + flip of a clip's frames ``[T, H, W, 3]`` (already sampled)."""
    height, width = frames.shape[1:3]
    box = crop_box(height, width, params["scale"], params["corner"])
    return crop_resize(frames, box, crop_size, params["flip"])
