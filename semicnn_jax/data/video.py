"""Video files -> uint8 frames, and the clip preprocessing shared by training, evaluation and prediction.

Decoding uses PyAV (FFmpeg) with one decoder thread: parallelism comes from loader workers, one
process per core. Frames are RGB ``uint8 [T, H, W, 3]``. Temporal loop padding follows Hara et al.
(the clip's own frames repeat until it is ``num_frames`` long). Spatial crops are square boxes of
the short side (an even number of pixels) resized to ``crop_size`` bilinearly by FFmpeg's swscale.

The loaders read clips straight from the decoded YUV frames (``read_train_clip``,
``read_eval_clips``): an FFmpeg filter graph per crop box crops the planes without copying and
scales them to ``crop_size`` in planar RGB, interpolating the chroma bilinearly from its own
resolution, then packs RGB: one pass over ``crop_size**2`` output pixels instead of converting the
whole frame and resizing it plane by plane (less CPU per clip, and closer to an exact reference).
The array functions (``read_video`` + ``eval_clips``, ``read_clip`` + ``train_clip``) give the same
crops from RGB frames, within a few levels where the chroma has fine detail.

Frames are read as players display them: a stream's rotation (the container's display matrix, as
phones write for portrait video) is applied to whole frames and to crops alike.
"""

from __future__ import annotations

import os
import threading
from fractions import Fraction
from typing import Iterator, Sequence

import av
import av.filter
import numpy as np
from av.video.reformatter import VideoReformatter

# Multi-scale crops of the paper (Hara et al.): fractions of the short side, and where the box sits.
CROP_SCALES = (1.0, 2**-0.25, 2**-0.5, 2**-0.75, 0.5)
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


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that display ``frame`` upright: its stream's rotation (the
    container's display matrix, e.g. a phone's portrait video), as players apply it."""
    return round(frame.rotation / 90) % 4


def upright(image: np.ndarray, turns: int) -> np.ndarray:
    """``uint8 [H, W, C]`` turned counter-clockwise ``turns`` quarter turns."""
    return np.rot90(image, turns) if turns else image


def _rgb(frame: av.VideoFrame, size: int | None = None) -> np.ndarray:
    """``frame`` as displayed (rotation applied), RGB ``uint8 [H, W, 3]``, resized to ``size x size`` if given."""
    rgb = _reformatter().reformat(frame, size, size, format="rgb24", interpolation="BILINEAR", threads=1)
    return upright(rgb.to_ndarray(), quarter_turns(frame))


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


def iter_frames(path: str) -> Iterator[av.VideoFrame]:
    """Every decoded frame of ``path`` in order, as stored (see ``quarter_turns``); a stream that breaks
    after some frames ends there; VideoError if unreadable or no frame decodes."""
    container, stream = _open(path)
    count = 0
    with container:
        try:
            for frame in container.decode(stream):
                count += 1
                yield frame
        except (av.FFmpegError, OSError) as e:
            if not count:
                raise VideoError(path, f"decoding failed ({type(e).__name__}: {e})") from None
    if not count:
        raise VideoError(path, "no decodable frames")


def _decode_all(path: str, convert) -> list:
    """``convert(frame)`` of every frame (see ``iter_frames``)."""
    return [convert(frame) for frame in iter_frames(path)]


def read_video(path: str) -> np.ndarray:
    """All frames of a video file as RGB ``uint8 [T, H, W, 3]`` (T >= 1); VideoError if unreadable.

    A stream that breaks after some frames (a truncated file) keeps the frames decoded so far.
    """
    return np.stack(_decode_all(path, _rgb))


def frame_rate(path: str) -> Fraction:
    """Frames per second: the stream's mean rate, else FFmpeg's estimate, else 25; VideoError if unreadable."""
    container, stream = _open(path)
    with container:
        return Fraction(stream.average_rate or stream.guessed_rate or 25)


def probe_num_frames(path: str) -> int:
    """Number of frames from the container header; where it does not say (Matroska, WebM), the video
    packets counted without decoding them (0 if that fails too); VideoError if unreadable."""
    container, stream = _open(path)
    with container:
        if stream.frames:
            return int(stream.frames)
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except (av.FFmpegError, OSError):
            return 0


def _decode_range(container, stream, first: int, last: int, convert) -> list | None:
    """``convert(frame)`` of frames ``first..last`` (indices from timestamps), seeking to the keyframe
    before ``first``; None when the stream does not allow it (no timestamps, a gap, a decoding error,
    too few frames)."""
    rate, time_base, t0 = stream.average_rate or stream.guessed_rate, stream.time_base, stream.start_time or 0
    if not rate or not time_base:
        return None
    # frame index = round((pts - t0) * time_base * rate), in integers (Fractions cost ~0.5 ms a clip)
    num, den = time_base.numerator * rate.numerator, time_base.denominator * rate.denominator
    out = []
    try:
        if first > 0:
            container.seek(t0 + round(first / rate / time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            i, rest = divmod((frame.pts - t0) * num, den)
            i += 2 * rest > den or (2 * rest == den and i % 2)  # Python's round: half to even
            if i < first:
                continue
            if i != first + len(out):
                return None
            out.append(convert(frame))
            if i == last:
                return out
    except (av.FFmpegError, OSError):
        return None
    return None


def _read_frames(path: str, num_frames: int, position: float, convert) -> list:
    """``convert(frame)`` of the clip's frames (loop-padded, see ``read_clip``): each frame converted once."""
    container, stream = _open(path)
    with container:
        length = int(stream.frames or 0)
        if length > 0:
            start = clip_start(length, num_frames, position)
            idx = loop_indices(start, num_frames, length)
            frames = _decode_range(container, stream, start, int(idx.max()), convert)
            if frames is not None:
                return [frames[i] for i in idx - start]
    frames = _decode_all(path, convert)
    return [frames[i] for i in loop_indices(clip_start(len(frames), num_frames, position), num_frames, len(frames))]


def read_clip(path: str, num_frames: int, position: float) -> np.ndarray:
    """The ``num_frames``-frame clip at relative ``position`` in [0, 1) (see ``clip_start``), loop-padded,
    as RGB ``uint8 [num_frames, H, W, 3]``: equal to ``read_video(path)`` indexed by the clip's frames,
    but decoded only from the keyframe before the clip to its last frame.

    Falls back to decoding the whole file when the header's frame count or the timestamps cannot be
    trusted; VideoError if unreadable.
    """
    return np.stack(_read_frames(path, num_frames, position, _rgb))


def decode_clip(path: str, num_frames: int, position: float) -> list:
    """The decoded (YUV) frames of ``read_clip``'s clip, unconverted: what decoding alone costs."""
    return _read_frames(path, num_frames, position, lambda frame: frame)


def read_train_clip(
    path: str, params: dict, num_frames: int, crop_size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``train_clip(read_clip(path, num_frames, params["position"]), params, crop_size)`` straight from the
    decoded frames (see the module doc): ``uint8 [num_frames, crop_size, crop_size, 3]``, written into
    ``out`` if given (e.g. a row of a batch: each frame is copied once, from the scaler's output)."""
    crop = _FrameCrop(params["scale"], params["corner"], crop_size, params["flip"])
    return np.stack(_read_frames(path, num_frames, params["position"], crop), out=out)


def read_eval_clips(path: str, num_frames: int, crop_size: int) -> np.ndarray:
    """``eval_clips(read_video(path), num_frames, crop_size)`` straight from the decoded frames:
    ``uint8 [K, num_frames, crop_size, crop_size, 3]``; VideoError if unreadable."""
    return clips_of(read_eval_frames(path, crop_size), num_frames)


def read_eval_frames(path: str, crop_size: int) -> np.ndarray:
    """Every frame's centre crop of the short side (as displayed), ``uint8 [T, crop_size, crop_size, 3]``."""
    return np.stack(_decode_all(path, _FrameCrop(1.0, "center", crop_size)))


def clips_of(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """The non-overlapping, loop-padded evaluation clips of cropped frames ``[T, S, S, 3]``."""
    return frames[_eval_index(len(frames), num_frames)]


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
    """A square ``(left, top, right, bottom)`` box of side ``scale x short side`` (rounded down to an even
    number of pixels, so that it covers whole chroma samples of 4:2:0 video) at ``position``."""
    if position not in CROP_POSITIONS:
        raise ValueError(f"crop position {position!r} is unknown; valid: {', '.join(CROP_POSITIONS)}")
    side = int(min(height, width) * scale)
    side = max(1, side - side % 2 if side > 1 else side)
    x = {"center": (width - side) // 2, "top_left": 0, "bottom_left": 0}.get(position, width - side)
    y = {"center": (height - side) // 2, "top_left": 0, "top_right": 0}.get(position, height - side)
    return x, y, x + side, y + side


# What the crop is scaled to before packing RGB. Planar RGB interpolates the chroma bilinearly at the
# output size: mean |difference| from an exact reference (whole frames to RGB with interpolated chroma,
# then Pillow's bilinear resize) 0.4 on smooth colour, 3.8 on colour noise (the benchmark's videos);
# "yuv420p" scales the planes as they are and packs with FFmpeg's fast converter (nearest chroma):
# ~2 ms/clip less, 1.2 and 5.7 from the reference. (RGB frames resized plane by plane: 1.2 and 4.9.)
SCALED_FORMAT = "gbrp"


def _graphs() -> dict:
    """Per thread (a graph is not thread-safe; grain maps in threads when it has no worker processes):
    (input size and format, box, output size, flip, ...) -> configured graph."""
    if not hasattr(_local, "graphs"):
        _local.graphs = {}
    return _local.graphs


def filter_graph(width: int, height: int, pix_fmt: str, filters: Sequence[tuple[str, str | None]]) -> av.filter.Graph:
    """A configured single-threaded FFmpeg filter graph: frames of ``width x height`` ``pix_fmt`` pushed
    through ``filters`` (``(name, args)`` in order), pulled from its sink."""
    graph = av.filter.Graph()
    graph.threads = 1
    chain = [graph.add_buffer(width=width, height=height, format=pix_fmt, time_base=Fraction(1, 25))]
    chain += [graph.add(name, args) for name, args in filters]
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def _scale_graph(
    width: int,
    height: int,
    pix_fmt: str,
    box: Sequence[int],
    size: int,
    flip: bool,
    chroma_shift: tuple[int, int] = (0, 0),
) -> av.filter.Graph:
    """buffer -> crop ``box`` -> bilinear scale to ``size x size`` ``SCALED_FORMAT`` -> [hflip] -> rgb24,
    configured once per thread and key (25 boxes x 2 flips for a video size in training).

    The crop moves plane pointers (no copy); ``chroma_shift`` (in chroma samples, 0 or 1 per axis) says
    that an odd offset left the first chroma sample one luma pixel before the box, which the scaler is
    told (``in_h/v_chr_pos``, MPEG-2 siting) instead of misplacing the colour by a pixel.
    """
    key = (width, height, pix_fmt, tuple(box), size, flip, chroma_shift, SCALED_FORMAT)
    graphs = _graphs()
    graph = graphs.get(key)
    if graph is None:
        if len(graphs) >= 256:
            graphs.clear()
        left, top, right, bottom = box
        chroma = ""
        if chroma_shift != (0, 0):
            chroma = f":in_h_chr_pos={-256 * chroma_shift[0]}:in_v_chr_pos={128 - 256 * chroma_shift[1]}"
        filters = [
            ("crop", f"w={right - left}:h={bottom - top}:x={left}:y={top}:exact=1"),
            ("scale", f"w={size}:h={size}:flags=bilinear:threads=1{chroma}"),
            ("format", SCALED_FORMAT),
        ]
        if flip:
            filters.append(("hflip", None))
        filters += [("scale", "flags=bilinear:threads=1"), ("format", "rgb24")]
        graph = filter_graph(width, height, pix_fmt, filters)
        graphs[key] = graph
    return graph


class _FrameCrop:
    """``frame -> uint8 [size, size, 3]``: a decoded frame's crop box (from its own size) scaled to RGB."""

    def __init__(self, scale: float, position: str, size: int, flip: bool = False):
        self.scale, self.position, self.size, self.flip = scale, position, size, flip

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        turns = quarter_turns(frame)
        if turns:  # the crop of the displayed frame is the turned crop of the stored frame's matching corner
            stored = _StoredCrop(self.scale, _STORED_CORNER[turns][self.position], self.size)
            crop = upright(stored(frame), turns)
            return np.ascontiguousarray(crop[:, ::-1] if self.flip else crop)
        return self._crop(frame)

    def _crop(self, frame: av.VideoFrame) -> np.ndarray:
        box = crop_box(frame.height, frame.width, self.scale, self.position)
        shift = (0, 0)
        planes = frame.planes
        if frame.format.name.startswith("yuv") and len(planes) >= 3:
            sub_x, sub_y = frame.width > planes[1].width, frame.height > planes[1].height
            shift = (int(sub_x and box[0] % 2), int(sub_y and box[1] % 2))
        graph = _scale_graph(frame.width, frame.height, frame.format.name, box, self.size, self.flip, shift)
        graph.push(frame)
        return graph.pull().to_ndarray()


class _StoredCrop(_FrameCrop):
    """A crop of the frame as stored, its rotation ignored."""

    __call__ = _FrameCrop._crop


def _corner_before_turns(position: str, turns: int) -> str:
    """The stored frame's crop position that ``turns`` counter-clockwise quarter turns bring to ``position``."""
    if position == "center":
        return position
    rows = {"top": 0, "bottom": 1}
    cols = {"left": 0, "right": 1}
    row, col = rows[position.split("_")[0]], cols[position.split("_")[1]]
    for _ in range(turns):  # np.rot90(m)[i, j] == m[j, -1 - i]
        row, col = col, 1 - row
    return f"{'top' if row == 0 else 'bottom'}_{'left' if col == 0 else 'right'}"


_STORED_CORNER = {t: {p: _corner_before_turns(p, t) for p in CROP_POSITIONS} for t in (1, 2, 3)}


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(plane, format="gray")
    return _reformatter().reformat(frame, size, size, format="gray", interpolation="BILINEAR", threads=1).to_ndarray()


def crop_resize(frames: np.ndarray, box: Sequence[int], size: int, flip: bool = False) -> np.ndarray:
    """``box`` of each frame of RGB ``uint8 [T, H, W, 3]`` resized to ``[T, size, size, 3]``, mirrored if ``flip``.

    Each colour plane is scaled on its own (swscale's packed-RGB path converts to YUV and back, at
    twice the cost; planar RGB frames through a filter graph give the same pixels more slowly).
    """
    left, top, right, bottom = box
    planes = np.ascontiguousarray(np.moveaxis(np.asarray(frames)[:, top:bottom, left:right], -1, 1))
    out = np.empty(planes.shape[:2] + (size, size), np.uint8)
    for t, c in np.ndindex(*planes.shape[:2]):  # one swscale call per plane
        out[t, c] = _resize_plane(planes[t, c], size)
    return np.ascontiguousarray(np.moveaxis(out[..., ::-1] if flip else out, 1, -1))


def _eval_index(length: int, num_frames: int) -> np.ndarray:
    """``[K, num_frames]`` frame indices of the non-overlapping, loop-padded evaluation clips."""
    return np.stack([loop_indices(s, num_frames, length) for s in eval_clip_starts(length, num_frames)])


def eval_clips(frames: np.ndarray, num_frames: int, crop_size: int) -> np.ndarray:
    """Evaluation preprocessing: all non-overlapping clips of a video (the last loop-padded), centre crop
    of the short side resized to ``crop_size``: ``uint8 [K, num_frames, crop_size, crop_size, 3]``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T>=1, H, W, 3], got shape {frames.shape}")
    length, height, width = frames.shape[:3]
    resized = crop_resize(frames.astype(np.uint8, copy=False), crop_box(height, width), crop_size)
    return resized[_eval_index(length, num_frames)]


# ---------------------------------------------------------------------------- training augmentation


def train_params(rng: np.random.Generator) -> dict:
    """The random choices of one training clip (paper 4.1): relative start, crop scale and position, flip."""
    return {
        "position": float(rng.random()),
        "scale": CROP_SCALES[rng.integers(len(CROP_SCALES))],
        "corner": CROP_POSITIONS[rng.integers(len(CROP_POSITIONS))],
        "flip": bool(rng.random() < 0.5),
    }


def train_clip(frames: np.ndarray, params: dict, crop_size: int) -> np.ndarray:
    """Multi-scale corner crop + resize + flip of a clip's frames ``[T, H, W, 3]`` (already sampled)."""
    height, width = frames.shape[1:3]
    box = crop_box(height, width, params["scale"], params["corner"])
    return crop_resize(frames, box, crop_size, params["flip"])
