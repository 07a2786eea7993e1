"""The file source: training and evaluation clips of any :class:`index.VideoIndex` (or of its prepared copy).

Every file-based dataset goes through here (``ucf101``, ``hmdb51``, ``kinetics``, ``folder``, ``list``):
its reader turns the release's files into an index; this module checks it, finds each video (or its
copy under ``dataset.prepared_dir``), and serves batches through the grain loader.

Training: one clip per video and epoch (paper 4.1): ``num_frames`` consecutive frames at a random
position, a multi-scale corner crop, a random flip; all choices from ``(seed, epoch, video index)``
(``video.read_train_clip``: cropped and scaled straight from the decoded frames).
Evaluation: every non-overlapping clip of every evaluation video (``video.read_eval_clips``, the crops
of ``video.eval_clips``); clips per video come from the container headers (or the prepared index),
counted once at the first evaluation.

Missing listed videos are an error before training unless ``dataset.skip_missing`` is set (then they
are kept, masked and named like unreadable files); for an index with ``drop_missing`` (Kinetics)
they are dropped and counted in one line. Unreadable videos are masked, logged once and counted.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable, Iterator, NamedTuple

import ml_collections
import numpy as np
from absl import logging

from semicnn_jax.data import index, loader, source, video

# The dataset.* fields the file source itself uses (each reader declares its own in its FIELDS).
FIELDS = {"prepared_dir": "", "workers": -1, "prefetch": 2}

Reader = Callable[[ml_collections.ConfigDict], index.VideoIndex]


class Row(NamedTuple):
    """A video as the loader reads it: its file, label, frame count if known (0: read the header), and
    why it cannot be read ("" if it can)."""

    path: str
    label: int
    frames: int = 0
    error: str = ""


def check(idx: index.VideoIndex, ds: ml_collections.ConfigDict) -> None:
    """Refuses an index that would make the dataset wrong: missing listed videos (unless skip_missing or
    ``drop_missing``), or no training or evaluation video at all."""
    missing = idx.missing()
    if missing and not idx.drop_missing and not ds.get("skip_missing", False):
        shown = "\n  ".join(missing[:5])
        raise ValueError(
            f"{len(missing)} videos listed by {idx.name} do not exist, e.g.\n  {shown}\n"
            "(set dataset.skip_missing=True to train without them; they are then skipped and named "
            "like unreadable files)"
        )
    for subset, videos in (("training", idx.train), ("evaluation", idx.val)):
        if not any(v.found for v in videos):
            where = f" ({len(videos)} listed, e.g. {os.path.join(idx.root, videos[0].rel)})" if videos else ""
            raise ValueError(f"{idx.name}: no {subset} video exists{where}")


def rows(idx: index.VideoIndex, data_dir: str, prepared_dir: str = "") -> tuple[tuple[Row, ...], tuple[Row, ...]]:
    """The training and evaluation rows of an index: each video's file, or its prepared copy."""
    prepared = index.read_prepared_index(prepared_dir) if prepared_dir else None
    copies = index.prepared_root(idx, data_dir, prepared_dir) if prepared_dir else ""
    out = []
    for subset, videos in (("train", idx.train), ("val", idx.val)):
        found = [v for v in videos if v.found]
        if idx.drop_missing and len(found) < len(videos):
            folders = sorted({os.path.join(idx.root, v.rel.split("/")[0]) for v in videos if not v.found})
            logging.warning(
                "%d of %d listed clips missing under %s; skipped",
                len(videos) - len(found),
                len(videos),
                ", ".join(folders),
            )
            videos = found
        subset_rows = []
        for v in videos:
            path = os.path.join(idx.root, v.rel)
            if not v.found:
                subset_rows.append(Row(path, v.label, 0, f"no such file (listed at {v.where})"))
            elif prepared is None:
                subset_rows.append(Row(path, v.label))
            elif v.rel not in prepared:
                raise ValueError(
                    f"{os.path.join(prepared_dir, index.PREPARED_INDEX)} has no entry for {v.rel}; rerun "
                    f"python -m semicnn_jax.data.prepare --data_dir={data_dir} --out={prepared_dir}"
                )
            elif "error" in prepared[v.rel]:  # named by its original path
                subset_rows.append(Row(path, v.label, 0, prepared[v.rel]["error"]))
            else:
                subset_rows.append(
                    Row(os.path.join(copies, index.prepared_name(v.rel)), v.label, int(prepared[v.rel]["frames"]))
                )
        out.append(tuple(subset_rows))
    return out[0], out[1]


def validate(config: ml_collections.ConfigDict, read: Reader) -> None:
    """The index files exist and make a sound dataset (ValueError naming the file, line or path otherwise)."""
    ds = config.dataset
    idx = read(ds)
    check(idx, ds)
    if ds.get("prepared_dir", ""):
        rows(idx, ds.data_dir, ds.prepared_dir)


def listed_videos(read: Reader) -> Callable[[ml_collections.ConfigDict], tuple[str, list[str]]]:
    """``ds -> (root, relative paths)`` of every video an index lists and that exists (for ``prepare``)."""

    def videos(ds):
        idx = read(ds)
        return idx.root, sorted({v.rel for v in idx.train + idx.val if v.found})

    return videos


# ---------------------------------------------------------------------------- rows and their loading


class TrainRow(NamedTuple):
    path: str
    label: int
    index: int  # the video's index in the training list: with (seed, epoch), its random choices
    seed: int
    epoch: int
    error: str = ""


class EvalRow(NamedTuple):
    path: str
    label: int
    video_index: int
    clip: int  # which of the video's non-overlapping clips
    error: str = ""


def load_train(row: TrainRow, out: np.ndarray, num_frames: int, crop_size: int) -> None:
    """Writes the paper's training clip of one video (random start, multi-scale corner crop, flip) into ``out``."""
    params = video.train_params(np.random.default_rng([row.seed, row.epoch, row.index]))
    video.read_train_clip(row.path, params, num_frames, crop_size, out=out)


@functools.lru_cache(maxsize=2)  # per process: a video's clips are consecutive rows
def _eval_clips(path: str, num_frames: int, crop_size: int) -> np.ndarray:
    return video.read_eval_clips(path, num_frames, crop_size)


def load_eval(row: EvalRow, out: np.ndarray, num_frames: int, crop_size: int) -> None:
    clips = _eval_clips(row.path, num_frames, crop_size)
    out[...] = clips[min(row.clip, len(clips) - 1)]  # a header that overstated the length repeats the last clip


class TrainSchedule:
    """Training batch ``k`` of the run (epoch ``k // steps``, step ``k % steps``): this process's rows."""

    def __init__(self, videos: tuple[Row, ...], seed: int, global_batch: int, rows: slice, build: loader.BatchBuilder):
        self.videos, self.seed, self.global_batch, self.rows, self.build = videos, seed, global_batch, rows, build
        self.steps = len(videos) // global_batch
        self._order = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            self._order = (epoch, source.epoch_order(self.seed, epoch, len(self.videos)))
        return self._order[1]

    def __call__(self, k: int) -> dict:
        epoch, step = divmod(int(k), self.steps)
        idx = self.order(epoch)[step * self.global_batch : (step + 1) * self.global_batch][self.rows]
        return self.build(
            [
                TrainRow(self.videos[i].path, self.videos[i].label, int(i), self.seed, epoch, self.videos[i].error)
                for i in idx
            ]
        )


class EvalSchedule:
    """Evaluation batch ``k`` (of pass ``k // len(self)``): this process's rows of every clip, padded."""

    def __init__(
        self,
        videos: tuple[Row, ...],
        clips: list[source.Clip],
        global_batch: int,
        rows: slice,
        build: loader.BatchBuilder,
    ):
        self.videos, self.clips, self.rows, self.build = videos, clips, rows, build
        self.layout = [(idx[rows], mask[rows]) for idx, mask in source.eval_index_batches(len(clips), global_batch)]

    def __len__(self) -> int:
        return len(self.layout)

    def __call__(self, k: int) -> dict:
        idx, mask = self.layout[int(k) % len(self.layout)]
        batch_rows = []
        for i, keep in zip(idx, mask):
            v, clip = self.clips[i]
            row = self.videos[v]
            batch_rows.append(EvalRow(row.path, row.label, v, clip, row.error) if keep else None)
        batch = self.build(batch_rows)
        batch["video_index"] = np.asarray([self.clips[i].video for i in idx], np.int32)
        return batch


# ---------------------------------------------------------------------------- the source


class VideoList:
    """Clips of the videos an index reader lists (``dataset.prepared_dir`` empty) or of their prepared copies."""

    def __init__(self, config: ml_collections.ConfigDict, read: Reader):
        ds = config.dataset
        self.index = read(ds)
        check(self.index, ds)
        self.train, self.val = rows(self.index, ds.data_dir, ds.get("prepared_dir", ""))
        self.seed, self.num_frames, self.crop_size = int(config.seed), int(config.num_frames), int(config.crop_size)
        self.num_epochs = int(config.get("num_epochs", 1))
        self.info = source.DatasetInfo(self.index.name, self.index.class_names, len(self.train), len(self.val))
        workers = ds.get("workers", FIELDS["workers"])
        self.loader = loader.Loader(
            loader.default_workers() if workers < 0 else workers, ds.get("prefetch", FIELDS["prefetch"])
        )
        shape = (self.num_frames, self.crop_size, self.crop_size, 3)
        sizes = {"num_frames": self.num_frames, "crop_size": self.crop_size}
        self._train = loader.BatchBuilder(functools.partial(load_train, **sizes), ("label",), shape)
        self._eval = loader.BatchBuilder(functools.partial(load_eval, **sizes), ("label", "video_index"), shape)
        self._clips: list[source.Clip] | None = None

    def train_batches(self, epoch: int, start_step: int, global_batch: int) -> Iterator[dict]:
        rows = source.process_slice(global_batch)
        schedule = TrainSchedule(self.train, self.seed, global_batch, rows, self._train)
        start = epoch * schedule.steps + start_step
        stop = max(self.num_epochs, epoch + 1) * schedule.steps
        yield from self.loader.batches(
            "train", (global_batch, rows.start), schedule, start, schedule.steps - start_step, stop
        )

    def eval_clips(self) -> list[source.Clip]:
        """``(video index, clip index)`` of every evaluation clip, in order."""
        if self._clips is None:
            started = time.time()
            lengths = [row.frames or (0 if row.error else _probe(row.path)) for row in self.val]
            self._clips = source.eval_clips(lengths, self.num_frames, started)
        return self._clips

    def eval_batches(self, global_batch: int) -> Iterator[dict]:
        rows = source.process_slice(global_batch)
        schedule = EvalSchedule(self.val, self.eval_clips(), global_batch, rows, self._eval)
        n = len(schedule)
        position = self.loader.position("eval")
        start = position if position is not None and position % n == 0 else 0  # the next pass
        yield from self.loader.batches("eval", (global_batch, rows.start), schedule, start, n, start + 1000 * n)

    def skipped_files(self) -> dict[str, str]:
        return dict(self.loader.skipped)

    def close(self) -> None:
        """Stops the loader's worker processes (also done at exit)."""
        self.loader.close()


def _probe(path: str) -> int:
    try:
        return video.probe_num_frames(path)
    except video.VideoError:
        return 0  # one clip; reading it fails again and masks it
