"""UCF-101 from TensorFlow Datasets: ``dataset.name="tfds:ucf101/ucf101_1_256"`` prepared under ``dataset.data_dir``.

Nothing is downloaded at run time: prepare the dataset once with
``tfds build ucf101/ucf101_1_256 --data_dir=<data_dir>`` (needs ffmpeg and network access).
Frames stay JPEG-encoded until a clip is chosen, so a training clip decodes only its own frames;
sampling and crops are the same functions as the file source (``video.train_params``,
``video.train_clip``, ``video.eval_clips``), run in tf.data's parallel map.

Order: the epoch's order is a seeded shuffle buffer (``dataset.shuffle_buffer`` videos, seed from
``(seed, epoch)``) over the records in file order, so it is a pure function of (seed, epoch); a
resumed epoch skips the consumed records without decoding them.
"""

from __future__ import annotations

import io
import time
from typing import Iterator

import ml_collections
import numpy as np
from PIL import Image

from semicnn_jax.data import source, video

PREFIX = "tfds:"
FIELDS = {"data_dir": "", "workers": -1, "shuffle_buffer": 256}  # the dataset.* fields this source uses


def _tf():
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only: the accelerators belong to JAX
    return tf


def _builder(config: ml_collections.ConfigDict):
    import tensorflow_datasets as tfds

    name = config.dataset.name[len(PREFIX) :]
    try:
        return tfds.builder(name, data_dir=config.dataset.data_dir or None)
    except Exception as e:  # an unknown name or config
        raise ValueError(f"dataset.name={config.dataset.name!r}: no such TFDS dataset ({e})") from None


def validate(config: ml_collections.ConfigDict) -> None:
    builder = _builder(config)
    if not builder.is_prepared():
        name = config.dataset.name[len(PREFIX) :]
        raise ValueError(
            f"dataset.name={config.dataset.name!r}: the TFDS dataset is not prepared under "
            f"{builder.data_path} (dataset.data_dir={config.dataset.data_dir!r}); it is never downloaded "
            f"at run time. Prepare it once with: tfds build {name} --data_dir={config.dataset.data_dir or '<dir>'}"
        )
    for split in ("train", "test"):
        if split not in builder.info.splits:
            raise ValueError(f"{builder.data_path}: the TFDS dataset has no {split!r} split")


def _decode(encoded: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """JPEG frames ``encoded[indices]`` -> RGB ``uint8 [len(indices), H, W, 3]`` (each distinct frame decoded once)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = np.stack([np.asarray(Image.open(io.BytesIO(encoded[i])).convert("RGB")) for i in unique])
    return frames[inverse]


class TFDSVideos:
    """A TFDS video classification dataset (``video``: encoded frames, ``label``) as a Source."""

    def __init__(self, config: ml_collections.ConfigDict):
        import tensorflow_datasets as tfds

        self._tfds, self.tf = tfds, _tf()
        self.builder = _builder(config)
        self.name = config.dataset.name
        self.seed, self.num_frames, self.crop_size = int(config.seed), int(config.num_frames), int(config.crop_size)
        self.shuffle_buffer = int(config.dataset.get("shuffle_buffer", 256))
        workers = config.dataset.get("workers", -1)
        self.parallel = self.tf.data.AUTOTUNE if workers < 0 else max(1, workers)
        names = tuple(self.builder.info.features["label"].names)
        self.info = source.DatasetInfo(self.name, names, self._count("train"), self._count("test"))
        self._skipped = source.SkippedFiles()
        self._clips = None

    def _records(self, split: str):
        return self.builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={"video": self._tfds.decode.SkipDecoding()},
            read_config=self._tfds.ReadConfig(add_tfds_id=False),
        )

    def _count(self, split: str) -> int:
        n = self.builder.info.splits[split].num_examples if split in self.builder.info.splits else 0
        return int(n) if n else int(self._records(split).reduce(0, lambda n, _: n + 1))

    # ------------------------------------------------------------------ training

    def _train_example(self, encoded, label, index, epoch):
        name = f"{self.name}/train[{int(index)}]"
        try:
            params = video.train_params(np.random.default_rng([self.seed, int(epoch), int(index)]))
            start = video.clip_start(len(encoded), self.num_frames, params["position"])
            frames = _decode(encoded, video.loop_indices(start, self.num_frames, len(encoded)))
            return video.train_clip(frames, params, self.crop_size), label, True, b""
        except Exception as e:  # a bad record is masked and named, never fatal
            return self._zeros(), label, False, f"{name}: {type(e).__name__}: {e}".encode()

    def _zeros(self):
        return np.zeros((self.num_frames, self.crop_size, self.crop_size, 3), np.uint8)

    def train_batches(self, epoch: int, start_step: int, global_batch: int) -> Iterator[dict]:
        tf = self.tf
        steps = self.info.num_train // global_batch
        rows = source.process_slice(global_batch)
        shuffle_seed = int(np.random.default_rng([self.seed, epoch]).integers(2**31))
        ds = self._records("train").enumerate()
        ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        ds = ds.take(steps * global_batch).enumerate().skip(start_step * global_batch)
        ds = ds.filter(lambda pos, _: (pos % global_batch >= rows.start) & (pos % global_batch < rows.stop))

        def example(pos, indexed):
            index, record = indexed
            out = tf.numpy_function(
                lambda video, label, i: self._train_example(video, label, i, epoch),
                [record["video"], record["label"], index],
                [tf.uint8, tf.int64, tf.bool, tf.string],
                stateful=False,
            )
            return dict(zip(("video", "label", "mask", "error"), out))

        ds = ds.map(example, num_parallel_calls=self.parallel, deterministic=True)
        yield from self._batches(ds.batch(rows.stop - rows.start).prefetch(2))

    def _batches(self, ds) -> Iterator[dict]:
        for batch in ds.as_numpy_iterator():
            self._record(batch.pop("error"))
            yield {
                "video": batch["video"].reshape((-1,) + self._zeros().shape),
                "label": batch["label"].astype(np.int32),
                "mask": batch["mask"].astype(bool),
            }

    def _record(self, errors) -> None:
        """Errors of a batch (``b"name: reason"``, ``b""`` for none) into the skipped-file recorder."""
        self._skipped.record(tuple(e.decode().split(": ", 1)) for e in errors if e)

    # ------------------------------------------------------------------ evaluation

    def eval_clips(self) -> list[source.Clip]:
        """``(video index, clip index)`` of every evaluation clip (frame counts read once, frames not decoded)."""
        if self._clips is None:
            started = time.time()
            lengths = [
                int(n) for n in self._records("test").map(lambda r: self.tf.shape(r["video"])[0]).as_numpy_iterator()
            ]
            self._clips = source.eval_clips(lengths, self.num_frames, started)
        return self._clips

    def _eval_video(self, encoded, index):
        try:
            return video.eval_clips(_decode(encoded, np.arange(len(encoded))), self.num_frames, self.crop_size), b""
        except Exception as e:
            k = video.num_eval_clips(len(encoded), self.num_frames)
            return np.zeros(
                (k,) + self._zeros().shape, np.uint8
            ), f"{self.name}/test[{int(index)}]: {type(e).__name__}: {e}".encode()

    def eval_batches(self, global_batch: int) -> Iterator[dict]:
        tf = self.tf
        clips = self.eval_clips()
        rows = source.process_slice(global_batch)
        layout = [(idx[rows], mask[rows]) for idx, mask in source.eval_index_batches(len(clips), global_batch)]
        needed = np.zeros(self.info.num_eval, bool)
        for idx, mask in layout:
            needed[[clips[i][0] for i in idx[mask]]] = True

        def decode(index, record):
            out = tf.numpy_function(self._eval_video, [record["video"], index], [tf.uint8, tf.string], stateful=False)
            return index, record["label"], out[0], out[1]

        ds = self._records("test").enumerate().filter(lambda i, _: tf.gather(needed, i))
        ds = ds.map(decode, num_parallel_calls=self.parallel, deterministic=True).prefetch(2)
        videos = iter(ds.as_numpy_iterator())
        loaded: dict[int, tuple] = {}
        for idx, mask in layout:
            batch = {
                "video": np.zeros((len(idx),) + self._zeros().shape, np.uint8),
                "label": np.zeros(len(idx), np.int32),
                "mask": np.zeros(len(idx), bool),
                "video_index": np.zeros(len(idx), np.int32),
            }
            wanted = {clips[i][0] for i in idx[mask]}
            for v in sorted(set(loaded) - wanted):
                del loaded[v]  # clips come in video order: earlier videos are done
            while not wanted <= set(loaded):
                v, label, video_clips, error = next(videos)
                loaded[int(v)] = (int(label), video_clips, error)
            errors = []
            for row, (i, keep) in enumerate(zip(idx, mask)):
                v, k = clips[i]
                batch["video_index"][row] = v
                if not keep:
                    continue
                label, video_clips, error = loaded[v]
                batch["label"][row] = label
                batch["video"][row] = video_clips[min(k, len(video_clips) - 1)]
                batch["mask"][row] = not error
                errors.append(error)
            self._record(errors)
            yield batch

    def skipped_files(self) -> dict[str, str]:
        return dict(self._skipped)

    def close(self) -> None:
        """Nothing to release: tf.data's threads end with their iterators."""
