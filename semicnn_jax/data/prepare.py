"""One-time preparation: re-encodes every video of a file dataset for fast random clip access.

    python -m semicnn_jax.data.prepare --data_dir=/data/UCF101 --out=/data/UCF101_prepared
    python -m semicnn_jax.data.prepare --dataset=folder --data_dir=/data/my_videos --out=/data/my_videos_prepared
    python -m semicnn_jax.data.prepare --dataset=list --data_dir=/data/clips --train_list=train.txt \
        --val_list=val.txt --out=/data/clips_prepared
    # then train with --config.dataset.prepared_dir=<out> (data_dir stays the original: the lists live there)

Every dataset of ``pipeline.SOURCES`` that reads files works (``--dataset``, default ``ucf101``): UCF-101
and HMDB-51 prepare every video of their class folders (all three splits), the others every video
their lists or folders name. Copies keep the videos' paths (``x.avi``, or ``x.mp4`` as ``x.mp4.avi``).

Each video becomes MPEG-4 part 2 (the codec of the release; the fastest to decode of those PyAV
writes) in AVI, at its own size and frame rate, upright, with a fixed quantiser (``--quantizer``, 3:
closer to the source than quantiser 2 through RGB was, and 10 % faster to read than quantiser 2) and a
keyframe every ``--keyframe_every`` frames: a random 16-frame clip then decodes at most 31 frames
instead of everything since the release's last keyframe, and evaluation clips start on keyframes.

YUV 4:2:0 BT.601 video-range sources (UCF-101, HMDB-51, Kinetics' SD videos) are re-encoded as
decoded, without a trip through RGB (which subsamples the chroma a second time); others (BT.709 HD and
phone video, full range, other pixel formats) are converted once, in YUV, to what the copy is read as
(AVI records no colour matrix). Videos are streamed through, never held whole in memory.
``--short_side=N`` stores larger videos scaled down (area averaging) to a short side of N, as Hara et
al. (240) and MMAction2 (256) prepare theirs: HD or phone videos then decode several times faster
(1280x720 at 240: 128 instead of 39 training clips/s per core); training and evaluation crops are
fractions of the short side, so they keep their framing.

The exact frame count of each video goes to ``index.json`` (written last, so its presence means "finished"),
which also names the videos that could not be decoded. Rerunning skips the videos already written;
a rerun with other encoding settings into the same folder is refused (``prepare.json`` records them).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from fractions import Fraction
from typing import Iterable

import av
import ml_collections
from absl import app, flags, logging

from semicnn_jax.data import index, loader, pipeline, video

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined only when it runs, so importing this module defines none)."""
    flags.DEFINE_string("dataset", "ucf101", "config.dataset.name of the dataset (one that reads files).")
    flags.DEFINE_string("data_dir", None, "config.dataset.data_dir (UCF-101: UCF-101/ and ucfTrainTestlist/).")
    flags.DEFINE_string("train_list", "", "list datasets: config.dataset.train_list.")
    flags.DEFINE_string("val_list", "", "list datasets: config.dataset.val_list.")
    flags.DEFINE_string("class_names", "", "list datasets: config.dataset.class_names.")
    flags.DEFINE_string("out", None, "Output folder (then config.dataset.prepared_dir).")
    flags.DEFINE_integer("workers", 0, "Processes (0: one per core).")
    flags.DEFINE_integer("keyframe_every", 16, "Keyframe interval (config.num_frames is a good choice).")
    flags.DEFINE_integer("quantizer", 3, "MPEG-4 quantiser, 2 (best) .. 31.")
    flags.DEFINE_integer(
        "short_side", 0, "Store larger videos scaled down to this short side (even; 0: their own size)."
    )
    flags.mark_flags_as_required(["data_dir", "out"])


# What each upright turn needs (see ``video.quarter_turns``: counter-clockwise quarter turns).
_TURN_FILTERS = {1: (("transpose", "cclock"),), 2: (("hflip", None), ("vflip", None)), 3: (("transpose", "clock"),)}


def stored_size(width: int, height: int, short_side: int = 0) -> tuple[int, int]:
    """``(width, height)`` of a prepared copy of a ``width x height`` (displayed) video: scaled down so
    that its short side is ``short_side`` (0, or a smaller video: its own size), sides even."""
    if short_side and min(width, height) > short_side:
        ratio = short_side / min(width, height)
        width, height = (round(width * ratio / 2) * 2 or 2, round(height * ratio / 2) * 2 or 2)
    return width - width % 2, height - height % 2


# MPEG-4 part 2 in AVI records no colour matrix or range: the copy is read as BT.601 video range, so
# frames of other matrices (BT.709: most HD and phone video) or full range are converted to it.
READ_AS_BT601 = (2, 5, 6)  # AVColorSpace: unspecified, BT.470BG, SMPTE 170M
TO_STORED = "out_range=tv:out_color_matrix=bt601:threads=1"
MAX_TIME_BASE = 65535  # the largest time-base denominator (frames per second's numerator) MPEG-4 part 2 encodes


class _Upright:
    """``frame ->`` the frame as displayed (its stream's rotation applied), at ``stored_size``, in
    yuv420p: the decoded frame itself when it is that already (no conversion, no second chroma
    subsampling), else one filter graph per input format and turn (area-averaged when it shrinks)."""

    def __init__(self, short_side: int = 0):
        self.short_side, self.graphs = short_side, {}

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        turns = video.quarter_turns(frame)
        width, height = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        size = stored_size(width, height, self.short_side)
        full_range = frame.color_range == av.video.reformatter.ColorRange.JPEG  # VP9/AV1/HEVC say so in yuv420p
        as_read = not full_range and frame.colorspace in READ_AS_BT601
        if not turns and frame.format.name == "yuv420p" and as_read and size == (width, height):
            return frame
        key = (frame.width, frame.height, frame.format.name, full_range, frame.colorspace, turns)
        if key not in self.graphs:
            filters = list(_TURN_FILTERS.get(turns, ()))
            if size != stored_size(width, height):  # shrunk
                filters.append(("scale", f"w={size[0]}:h={size[1]}:flags=area:{TO_STORED}"))
            else:  # an odd side loses its last row or column
                filters += [("crop", f"w={size[0]}:h={size[1]}:x=0:y=0:exact=1"), ("scale", TO_STORED)]
            filters.append(("format", "yuv420p"))
            self.graphs[key] = video.filter_graph(frame.width, frame.height, frame.format.name, filters)
        self.graphs[key].push(frame)
        return self.graphs[key].pull()


def encode(
    frames: Iterable[av.VideoFrame],
    path: str,
    fps,
    keyframe_every: int = 16,
    quantizer: int = 3,
    short_side: int = 0,
) -> int:
    """Writes decoded frames as MPEG-4 part 2 in AVI, upright, in yuv420p, at ``stored_size`` (YUV 4:2:0
    sources kept at their size pass as decoded: no trip through RGB); atomically: a temporary file, then
    a rename. Returns the frame count.
    """
    time_base = (1 / Fraction(fps)).limit_denominator(MAX_TIME_BASE)  # a variable-rate MP4's mean: 600000/19991
    fps = 1 / time_base
    tmp, count, upright = path + ".tmp.avi", 0, _Upright(short_side)
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream("mpeg4", rate=fps, options={"qmin": str(quantizer), "qmax": str(quantizer)})
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 100_000_000  # the quantiser, not a bit budget, sets the quality
            stream.codec_context.gop_size = keyframe_every
            stream.codec_context.thread_count = 1
            for frame in frames:
                frame = upright(frame)
                if not count:
                    stream.width, stream.height = frame.width, frame.height
                elif (frame.width, frame.height) != (stream.width, stream.height):
                    raise ValueError(
                        f"the frame size changes from {stream.width}x{stream.height} to "
                        f"{frame.width}x{frame.height} at frame {count}: not prepared (the loaders read the original)"
                    )
                frame.pts, frame.time_base = count, time_base  # numbered at the copy's own frame rate
                frame.pict_type = av.video.frame.PictureType.NONE  # not the source's: keyframes every keyframe_every
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def prepare_one(src: str, dst: str, keyframe_every: int, quantizer: int, short_side: int = 0) -> dict:
    """``{"frames": T}`` after writing ``dst`` (kept if already there), or ``{"error": reason}``."""
    try:
        if os.path.exists(dst):
            return {"frames": sum(1 for _ in video.iter_frames(dst))}
        fps = video.frame_rate(src)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        return {"frames": encode(video.iter_frames(src), dst, fps, keyframe_every, quantizer, short_side)}
    except video.VideoError as e:
        return {"error": e.reason}
    except Exception as e:  # noqa: BLE001 - a bad file is recorded, the others go on
        return {"error": f"{type(e).__name__}: {e}"}


def dataset_config(name: str, data_dir: str, **fields) -> ml_collections.ConfigDict:
    """``config.dataset`` of source ``name`` with its defaults, ``data_dir`` and ``fields`` set."""
    return ml_collections.ConfigDict(dict(pipeline.config_fields(name), data_dir=data_dir, **fields))


def prepare(
    data_dir: str,
    out: str,
    workers: int = 0,
    keyframe_every: int = 16,
    quantizer: int = 3,
    dataset: str = "ucf101",
    short_side: int = 0,
    **fields,
) -> dict:
    """Prepares every video of dataset ``dataset`` (``fields``: its other ``config.dataset`` fields, e.g.
    ``train_list``); returns the index it writes to ``out/index.json``. ``short_side`` > 0 stores larger
    videos scaled down to that short side (see ``stored_size``)."""
    if short_side < 0 or short_side % 2:
        raise ValueError(f"short_side={short_side}: an even number of pixels, or 0 for the videos' own size")
    entry = pipeline.entry(dataset)
    if entry.videos is None:
        raise ValueError(f"dataset {dataset!r} has no video files to prepare")
    root, files = entry.videos(dataset_config(dataset, data_dir, **fields))
    if not files:
        raise ValueError(f"{root}: no videos found")
    copies = os.path.normpath(os.path.join(out, os.path.relpath(root, data_dir)))
    _claim(out, {"keyframe_every": keyframe_every, "quantizer": quantizer, "short_side": short_side})
    index_path = os.path.join(out, index.PREPARED_INDEX)
    if os.path.exists(index_path):
        os.remove(index_path)  # unfinished until rewritten
    workers = workers or loader.default_workers()
    logging.info("preparing %d videos from %s into %s with %d processes", len(files), root, copies, workers)
    start, videos = time.time(), {}
    pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else _Inline()
    with pool:
        jobs = {
            pool.submit(
                prepare_one,
                os.path.join(root, rel),
                os.path.join(copies, index.prepared_name(rel)),
                keyframe_every,
                quantizer,
                short_side,
            ): rel
            for rel in files
        }
        for n, job in enumerate(concurrent.futures.as_completed(jobs), 1):
            rel = jobs[job]
            videos[rel] = job.result()
            if "error" in videos[rel]:
                logging.warning("unreadable video %s: %s", os.path.join(root, rel), videos[rel]["error"])
            if n % 500 == 0 or n == len(files):
                logging.info("%d/%d videos, %.0f s", n, len(files), time.time() - start)
    index_data = {
        "format": f"mpeg4 avi, keyframe every {keyframe_every} frames, quantiser {quantizer}"
        + (f", short side at most {short_side}" if short_side else ""),
        "keyframe_every": keyframe_every,
        "dataset": dataset,
        "videos": dict(sorted(videos.items())),
    }
    with open(index_path + ".tmp", "w") as f:
        json.dump(index_data, f, indent=1)
    os.replace(index_path + ".tmp", index_path)
    size = sum(
        os.path.getsize(os.path.join(copies, index.prepared_name(r))) for r, v in videos.items() if "frames" in v
    )
    logging.info(
        "done: %d videos (%d unreadable), %.2f GiB, %.0f s",
        len(videos),
        sum("error" in v for v in videos.values()),
        size / 2**30,
        time.time() - start,
    )
    return index_data


SETTINGS = "prepare.json"  # the encoding settings of a folder's copies, written before the first copy


def _claim(out: str, settings: dict) -> None:
    """Records ``settings`` in ``out``; refuses (before any work) a folder whose copies were made with
    others: a rerun keeps the copies already written, which would mix two encodings."""
    path = os.path.join(out, SETTINGS)
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            raise ValueError(
                f"{out} holds copies prepared with {before}, not {settings}: prepare into a new --out "
                "(or delete that folder)"
            )
        return
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(
            f"{out} is not empty and has no {SETTINGS} (copies of an earlier version, or other files): "
            "prepare into a new --out"
        )
    os.makedirs(out, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(settings, f)
    os.replace(path + ".tmp", path)


class _Inline(concurrent.futures.Executor):
    """Runs jobs in this process (workers=1: no fork of a process that may hold JAX's threads)."""

    def submit(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    lists = {key: FLAGS[key].value for key in ("train_list", "val_list", "class_names") if FLAGS[key].value}
    prepare(
        FLAGS.data_dir,
        FLAGS.out,
        FLAGS.workers,
        FLAGS.keyframe_every,
        FLAGS.quantizer,
        FLAGS.dataset,
        FLAGS.short_side,
        **lists,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
