"""What every dataset source shares: the leaf of the data package's tree (it imports only ``video``,
itself a leaf; every source imports this module, none imports ``pipeline``).

A source yields host batches ``{'video': [B, T, H, W, 3], 'label': int32[B], 'mask': bool[B]}``
for this process's share of each global batch; ``video`` is uint8 in [0, 255] or float32 in
[0, 1] (normalisation runs on the device, inside the jitted step); ``mask`` is False for padding
and for examples that could not be read. Evaluation batches also carry ``video_index: int32[B]``
(which of the ``info.num_eval`` evaluation videos a clip comes from): clip scores averaged per
video give the video-level accuracy. Training order is a pure function of (seed, epoch), so a
resumed run starts an epoch at any step and sees exactly the examples the interrupted run would
have seen.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Iterator, NamedTuple, Protocol, Sequence

import jax
import numpy as np
from absl import logging

from semicnn_jax.data import video


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    num_train: int  # training examples (videos)
    num_eval: int  # evaluation videos

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Source(Protocol):
    info: DatasetInfo

    def train_batches(self, epoch: int, start_step: int, global_batch: int) -> Iterator[dict]: ...

    def eval_batches(self, global_batch: int) -> Iterator[dict]: ...

    def skipped_files(self) -> dict[str, str]:
        """Unreadable files met so far (path -> reason), cumulative."""
        ...

    def close(self) -> None:
        """Releases worker processes or threads (a source without any does nothing)."""
        ...


def process_slice(global_batch: int) -> slice:
    """This process's rows of a global batch (data sharded by ``jax.process_index()``)."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The shuffled example order of one training epoch (deterministic in seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def eval_index_batches(num_examples: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation indices in global batches; the last batch is padded and masked."""
    for start in range(0, num_examples, global_batch):
        idx = np.arange(start, start + global_batch)
        yield np.minimum(idx, num_examples - 1), idx < num_examples


class Clip(NamedTuple):
    """One evaluation clip: the ``clip``-th non-overlapping clip of evaluation video ``video``."""

    video: int
    clip: int


def eval_clips(lengths: Sequence[int], num_frames: int, started: float | None = None) -> list[Clip]:
    """Every evaluation clip of videos of ``lengths`` frames, in order: each video's non-overlapping
    clips (``video.num_eval_clips``; a video of 0 or unknown length gets one). Logged, with the
    seconds since ``started`` (when reading the lengths began) if given."""
    clips = [Clip(v, k) for v, n in enumerate(lengths) for k in range(video.num_eval_clips(int(n), num_frames))]
    if started is not None:
        logging.info(
            "%d evaluation clips in %d videos (frame counts read in %.1f s)",
            len(clips),
            len(lengths),
            time.time() - started,
        )
    return clips


class SkippedFiles(dict):
    """Unreadable files (name -> reason), each logged once when first met."""

    def record(self, errors: Iterable[tuple[str, str]]) -> None:
        for name, reason in errors:
            if name not in self:
                self[name] = reason
                logging.warning("skipping unreadable video %s: %s", name, reason)
