"""Dataset sources behind one interface, chosen by ``config.dataset.name``.

A source yields host batches ``{'video': [B, T, H, W, 3], 'label': int32[B], 'mask': bool[B]}``
for this process's share of each global batch; ``video`` is uint8 in [0, 255] or float32 in
[0, 1] (normalisation runs on the device, inside the jitted step); ``mask`` is False for padding
and for examples that could not be read. Evaluation batches also carry ``video_index: int32[B]``
(which of the ``info.num_eval`` evaluation videos a clip comes from): clip scores averaged per
video give the video-level accuracy. Training order is a pure
function of (seed, epoch), so a resumed run starts an epoch at any step and sees exactly the
examples the interrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol

import jax
import ml_collections
import numpy as np

from semicnn_jax.data import synthetic_motion

# "tfds:" + a TFDS name with its config, e.g. "tfds:ucf101/ucf101_1_256" (prepared under dataset.data_dir).
SOURCES = ("synthetic_motion", "ucf101", "tfds:ucf101/<config>")
TFDS_PREFIX = "tfds:"


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


class SyntheticMotion:
    """The embedded dataset: clips whose class is defined only by motion (no files needed)."""

    def __init__(self, config: ml_collections.ConfigDict):
        ds = config.dataset
        self.seed = int(config.seed)
        self.num_frames, self.size = int(config.num_frames), int(config.crop_size)
        self.info = DatasetInfo("synthetic_motion", synthetic_motion.CLASS_NAMES,
                                int(ds.get("train_size", 4096)), int(ds.get("eval_size", 512)))
        # Evaluation clips come from another seed, so they never coincide with training clips.
        self.eval_seed = (self.seed + 1_000_003) % 2**32
        # Fresh training clips every epoch (epoch e renders indices e * train_size + ...), or the same set.
        self.fresh_clips = bool(ds.get("fresh_clips", False))

    def _render(self, seed: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clips, labels = synthetic_motion.batch_for_indices(seed, indices, self.num_frames, self.size)
        return np.asarray(clips), np.asarray(labels)

    def train_batches(self, epoch: int, start_step: int, global_batch: int) -> Iterator[dict]:
        order = epoch_order(self.seed, epoch, self.info.num_train)
        rows = process_slice(global_batch)
        for step in range(start_step, self.info.num_train // global_batch):
            idx = order[step * global_batch:(step + 1) * global_batch][rows]
            if self.fresh_clips:
                idx = idx + epoch * self.info.num_train
            video, label = self._render(self.seed, idx)
            yield {"video": video, "label": label, "mask": np.ones(len(idx), bool)}

    def eval_batches(self, global_batch: int) -> Iterator[dict]:
        rows = process_slice(global_batch)
        for idx, mask in eval_index_batches(self.info.num_eval, global_batch):
            video, label = self._render(self.eval_seed, idx[rows])
            yield {"video": video, "label": label, "mask": mask[rows], "video_index": idx[rows].astype(np.int32)}

    def skipped_files(self) -> dict[str, str]:
        return {}


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses an unknown ``dataset.name`` or missing dataset files before any work starts (ValueError
    naming the path or key)."""
    name = config.dataset.name
    if name == "synthetic_motion":
        return
    if name == "ucf101":
        from semicnn_jax.data import ucf101
        return ucf101.validate(config)
    if name.startswith(TFDS_PREFIX):
        from semicnn_jax.data import tfds_source
        return tfds_source.validate(config)
    raise ValueError(f"dataset.name={name!r} is unknown; valid: {', '.join(SOURCES)}")


def create(config: ml_collections.ConfigDict) -> Source:
    """The source named by ``config.dataset.name``; an unknown name raises ValueError."""
    name = config.dataset.name
    if name == "synthetic_motion":
        return SyntheticMotion(config)
    if name == "ucf101":
        from semicnn_jax.data import ucf101
        return ucf101.UCF101(config)
    if name.startswith(TFDS_PREFIX):
        from semicnn_jax.data import tfds_source
        return tfds_source.TFDSVideos(config)
    raise ValueError(f"dataset.name={name!r} is unknown; valid: {', '.join(SOURCES)}")
