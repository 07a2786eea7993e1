"""UCF-101 from the official release (or its prepared copy): split lists, labels, and the clip source.

Layout under ``dataset.data_dir``::

    UCF-101/<Class>/v_<Class>_gGG_cCC.avi
    ucfTrainTestlist/classInd.txt                 "1 ApplyEyeMakeup" (1-based)
    ucfTrainTestlist/trainlist0{1,2,3}.txt        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist0{1,2,3}.txt         "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

Labels are 0-based inside. List entries are matched to files case-insensitively (the release's
``HandstandPushups`` folder holds ``v_HandStandPushups_*`` files while the lists say otherwise).
A list entry whose file is missing is an error before training starts, unless
``dataset.skip_missing`` is set: then it is skipped and named like an unreadable file.

Training: one clip per video and epoch (paper 4.1): ``num_frames`` consecutive frames at a random
position, a multi-scale corner crop, a random flip; all choices from ``(seed, epoch, video index)``
(``video.read_train_clip``: cropped and scaled straight from the decoded frames).
Evaluation: every non-overlapping clip of every test video (``video.read_eval_clips``, the crops of
``video.eval_clips``); clips per video come from the container headers (or the prepared index),
counted once at the first evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Iterator, NamedTuple

import ml_collections
import numpy as np
from absl import logging

from semicnn_jax.data import loader, video

VIDEOS, LISTS = "UCF-101", "ucfTrainTestlist"
PREPARED_INDEX = "index.json"  # written last by ``semicnn_jax.data.prepare``


# ---------------------------------------------------------------------------- the release's index files


def list_file(data_dir: str, subset: str, split: int = 1) -> str:
    name = "classInd.txt" if subset == "classes" else f"{subset}list{split:02d}.txt"
    return os.path.join(data_dir, LISTS, name)


def _lines(path: str, what: str) -> list[tuple[int, list[str]]]:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} is missing; dataset.data_dir must hold the official UCF-101 release "
                         f"({VIDEOS}/<Class>/*.avi and {LISTS}/classInd.txt, trainlist0N.txt, testlist0N.txt)")
    with open(path, encoding="utf-8-sig") as f:
        return [(n, line.split()) for n, line in enumerate(f, 1) if line.strip()]


def read_class_names(data_dir: str) -> tuple[str, ...]:
    """Class names in label order from classInd.txt (``"1 ApplyEyeMakeup"`` -> label 0)."""
    path = list_file(data_dir, "classes")
    names = {}
    for n, parts in _lines(path, "the class index"):
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<index> <ClassName>', got {' '.join(parts)!r}")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: class indices must run 1..{len(names)}, got {sorted(names)}")
    return tuple(names[i] for i in range(1, len(names) + 1))


def read_split(data_dir: str, split: int, subset: str, class_names: tuple[str, ...]) -> list[tuple[str, int]]:
    """``(relative path, 0-based label)`` of a split list; the label of a train line must agree with its folder."""
    path = list_file(data_dir, subset, split)
    by_folder = {name.lower(): i for i, name in enumerate(class_names)}
    out = []
    for n, parts in _lines(path, f"the {subset} list of split {split}"):
        rel = parts[0].replace("\\", "/")
        label = by_folder.get(rel.split("/")[0].lower())
        if label is None or "/" not in rel:
            raise ValueError(f"{path}:{n}: {rel!r} is not under a class folder of classInd.txt")
        if len(parts) > 1 and parts[1] != str(label + 1):
            raise ValueError(f"{path}:{n}: label {parts[1]} disagrees with the folder of {rel!r} "
                             f"({class_names[label]} = {label + 1} in classInd.txt)")
        out.append((rel, label))
    return out


def index_files(root: str) -> dict[str, str]:
    """Lower-cased ``Class/file`` -> the actual relative path, for every file under ``root``'s class folders."""
    files = {}
    if os.path.isdir(root):
        for folder in os.scandir(root):
            if folder.is_dir():
                for entry in os.scandir(folder.path):
                    rel = f"{folder.name}/{entry.name}"
                    files[rel.lower()] = rel
    return files


def prepared_name(rel: str) -> str:
    """Where ``prepare`` writes the copy of release file ``rel`` (relative to ``prepared_dir``)."""
    return os.path.join(VIDEOS, os.path.splitext(rel)[0] + ".avi")


@dataclasses.dataclass(frozen=True)
class Release:
    """One split of a release, resolved to files: ``train``/``test`` are ``(path, label, frames, error)``."""

    class_names: tuple[str, ...]
    train: tuple[tuple[str, int, int, str], ...]
    test: tuple[tuple[str, int, int, str], ...]
    missing: tuple[str, ...]  # expected paths that do not exist


def load_release(data_dir: str, split: int, prepared_dir: str = "") -> Release:
    """Reads the class index and split lists and finds each listed video (or its prepared copy)."""
    if split not in (1, 2, 3):
        raise ValueError(f"dataset.split must be 1, 2 or 3 (UCF-101's splits), got {split!r}")
    names = read_class_names(data_dir)
    lists = {s: read_split(data_dir, split, s, names) for s in ("train", "test")}
    root = os.path.join(data_dir, VIDEOS)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: the video folder of the release is missing (dataset.data_dir={data_dir!r})")
    files = index_files(root)
    prepared = _read_prepared_index(prepared_dir) if prepared_dir else None
    missing, out = [], {}
    for subset, entries in lists.items():
        rows = []
        for rel, label in entries:
            actual = files.get(rel.lower())
            if actual is None:
                missing.append(os.path.join(root, rel))
                rows.append((os.path.join(root, rel), label, 0, "no such file (listed in the split file)"))
            elif prepared is None:
                rows.append((os.path.join(root, actual), label, 0, ""))
            elif actual not in prepared:
                raise ValueError(f"{os.path.join(prepared_dir, PREPARED_INDEX)} has no entry for {actual}; rerun "
                                 f"python -m semicnn_jax.data.prepare --data_dir={data_dir} --out={prepared_dir}")
            else:
                entry = prepared[actual]
                if "error" in entry:  # named by its release path
                    rows.append((os.path.join(root, actual), label, 0, entry["error"]))
                else:
                    rows.append((os.path.join(prepared_dir, prepared_name(actual)), label, int(entry["frames"]), ""))
        out[subset] = tuple(rows)
    return Release(names, out["train"], out["test"], tuple(missing))


def _read_prepared_index(prepared_dir: str) -> dict:
    path = os.path.join(prepared_dir, PREPARED_INDEX)
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: dataset.prepared_dir={prepared_dir!r} is not a finished prepared copy; "
                         "run python -m semicnn_jax.data.prepare --data_dir=<release> --out=<prepared_dir>")
    with open(path) as f:
        return json.load(f)["videos"]


def validate(config: ml_collections.ConfigDict) -> None:
    """Index files, split lists and listed videos exist (ValueError naming the path otherwise)."""
    ds = config.dataset
    if not ds.data_dir:
        raise ValueError("dataset.data_dir is empty: set it to the folder holding UCF-101/ and ucfTrainTestlist/")
    release = load_release(ds.data_dir, ds.split, ds.get("prepared_dir", ""))
    if release.missing and not ds.get("skip_missing", False):
        shown = "\n  ".join(release.missing[:5])
        raise ValueError(f"{len(release.missing)} videos named in the split {ds.split} lists do not exist, e.g.\n  "
                         f"{shown}\n(set dataset.skip_missing=True to train without them; they are then "
                         "skipped and named like unreadable files)")


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


def load_train(row: TrainRow, num_frames: int, crop_size: int) -> np.ndarray:
    """The paper's training clip of one video (random start, multi-scale corner crop, flip)."""
    params = video.train_params(np.random.default_rng([row.seed, row.epoch, row.index]))
    return video.read_train_clip(row.path, params, num_frames, crop_size)


@functools.lru_cache(maxsize=2)  # per process: a video's clips are consecutive rows
def _eval_clips(path: str, num_frames: int, crop_size: int) -> np.ndarray:
    return video.read_eval_clips(path, num_frames, crop_size)


def load_eval(row: EvalRow, num_frames: int, crop_size: int) -> np.ndarray:
    clips = _eval_clips(row.path, num_frames, crop_size)
    return clips[min(row.clip, len(clips) - 1)]  # a header that overstated the length repeats the last clip


# ---------------------------------------------------------------------------- the source


class TrainSchedule:
    """Training batch ``k`` of the run (epoch ``k // steps``, step ``k % steps``): this process's rows."""

    def __init__(self, videos, seed: int, global_batch: int, rows: slice, build: loader.BatchBuilder):
        self.videos, self.seed, self.global_batch, self.rows, self.build = videos, seed, global_batch, rows, build
        self.steps = len(videos) // global_batch
        self._order = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            from semicnn_jax.data import pipeline
            self._order = (epoch, pipeline.epoch_order(self.seed, epoch, len(self.videos)))
        return self._order[1]

    def __call__(self, k: int) -> dict:
        epoch, step = divmod(int(k), self.steps)
        idx = self.order(epoch)[step * self.global_batch:(step + 1) * self.global_batch][self.rows]
        return self.build([TrainRow(*self.videos[i][:2], int(i), self.seed, epoch, self.videos[i][3]) for i in idx])


class EvalSchedule:
    """Evaluation batch ``k`` (of pass ``k // len(self)``): this process's rows of every clip, padded."""

    def __init__(self, videos, clips, global_batch: int, rows: slice, build: loader.BatchBuilder):
        from semicnn_jax.data import pipeline
        self.videos, self.clips, self.rows, self.build = videos, clips, rows, build
        self.layout = [(idx[rows], mask[rows]) for idx, mask in pipeline.eval_index_batches(len(clips), global_batch)]

    def __len__(self) -> int:
        return len(self.layout)

    def __call__(self, k: int) -> dict:
        idx, mask = self.layout[int(k) % len(self.layout)]
        rows = []
        for i, keep in zip(idx, mask):
            v, clip = self.clips[i]
            path, label, _, error = self.videos[v]
            rows.append(EvalRow(path, label, v, clip, error) if keep else None)
        batch = self.build(rows)
        batch["video_index"] = np.asarray([self.clips[i][0] for i in idx], np.int32)
        return batch


class UCF101:
    """Clips of the official release (``dataset.prepared_dir`` empty) or of its prepared copy."""

    def __init__(self, config: ml_collections.ConfigDict):
        from semicnn_jax.data import pipeline  # the interface (pipeline imports this module lazily)
        self._pipeline = pipeline
        ds = config.dataset
        self.release = load_release(ds.data_dir, ds.split, ds.get("prepared_dir", ""))
        self.seed, self.num_frames, self.crop_size = int(config.seed), int(config.num_frames), int(config.crop_size)
        self.num_epochs = int(config.get("num_epochs", 1))
        self.info = pipeline.DatasetInfo(f"ucf101 split {ds.split}", self.release.class_names,
                                         len(self.release.train), len(self.release.test))
        workers = ds.get("workers", -1)
        self.loader = loader.Loader(loader.default_workers() if workers < 0 else workers, ds.get("prefetch", 2))
        shape = (self.num_frames, self.crop_size, self.crop_size, 3)
        sizes = {"num_frames": self.num_frames, "crop_size": self.crop_size}
        self._train = loader.BatchBuilder(functools.partial(load_train, **sizes), ("label",), shape)
        self._eval = loader.BatchBuilder(functools.partial(load_eval, **sizes), ("label", "video_index"), shape)
        self._clips = None

    def train_batches(self, epoch: int, start_step: int, global_batch: int) -> Iterator[dict]:
        rows = self._pipeline.process_slice(global_batch)
        schedule = TrainSchedule(self.release.train, self.seed, global_batch, rows, self._train)
        start = epoch * schedule.steps + start_step
        stop = max(self.num_epochs, epoch + 1) * schedule.steps
        yield from self.loader.batches("train", (global_batch, rows.start), schedule, start,
                                       schedule.steps - start_step, stop)

    def eval_clips(self) -> list[tuple[int, int]]:
        """``(video index, clip index)`` of every evaluation clip, in order."""
        if self._clips is None:
            start = time.time()
            counts = [frames or (0 if error else _probe(path)) for path, _, frames, error in self.release.test]
            self._clips = [(v, k) for v, n in enumerate(counts) for k in range(video.num_eval_clips(n, self.num_frames))]
            logging.info("%d evaluation clips in %d videos (frame counts read in %.1f s)", len(self._clips),
                         len(counts), time.time() - start)
        return self._clips

    def eval_batches(self, global_batch: int) -> Iterator[dict]:
        rows = self._pipeline.process_slice(global_batch)
        schedule = EvalSchedule(self.release.test, self.eval_clips(), global_batch, rows, self._eval)
        n = len(schedule)
        stream = self.loader._streams.get("eval")
        start = stream.position if stream is not None and stream.position % n == 0 else 0  # the next pass
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
