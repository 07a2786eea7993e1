"""Batches built in grain worker processes; unreadable rows become masked rows.

A source describes batch ``k`` of a stream as a pure function (``build(k) -> batch``), so the output
never depends on the number of workers, and a stream can start at any ``k``. Each worker builds
whole batches. Streams are persistent: worker processes are spawned once (a spawn re-imports the
main module: seconds) and keep going from one epoch into the next while the loop evaluates; a
request for another position than the stream's next one restarts it there.

A row that cannot be read becomes zeros with ``mask`` False; the batch carries its path and reason to
the main process, which logs the path once and keeps it in ``skipped`` (path -> reason).
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from semicnn_jax.data import source, video


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class BatchBuilder:
    """``rows -> batch``: ``load(row, out)`` writes each row's ``uint8 [T, S, S, 3]`` into its place ``out``
    in the batch; a None row is padding.

    Each name in ``fields`` becomes an int32 column read from the row's attribute of that name (0 for
    padding). A row whose ``error`` attribute is not "" is not read (a file known to be unreadable).
    """

    def __init__(self, load: Callable[[Any, np.ndarray], None], fields: Sequence[str], shape: Sequence[int]):
        self.load, self.fields, self.shape = load, tuple(fields), tuple(shape)

    def __call__(self, rows: Sequence[Any]) -> dict:
        clips = _new_clips((len(rows),) + self.shape)
        try:
            return self._fill(rows, clips)
        except BaseException:
            if isinstance(clips, grain.multiprocessing.SharedMemoryArray):
                clips.unlink_on_del()  # no batch: its shared memory goes with it
            raise

    def _fill(self, rows: Sequence[Any], clips: np.ndarray) -> dict:
        mask = np.zeros(len(rows), bool)
        columns = {key: np.zeros(len(rows), np.int32) for key in self.fields}
        errors = []
        for i, row in enumerate(rows):
            if row is None:
                continue
            for key in self.fields:
                columns[key][i] = getattr(row, key)
            if getattr(row, "error", ""):
                errors.append((row.path, row.error))
                continue
            try:
                self.load(row, clips[i])
                mask[i] = True
            except video.READ_ERRORS as e:  # a bad file must never stop training: mask it, name it
                clips[i] = 0  # whatever it wrote before failing
                errors.append((getattr(e, "path", row.path), getattr(e, "reason", f"{type(e).__name__}: {e}")))
        batch = {"video": clips, "mask": mask}
        batch.update(columns)
        batch["errors"] = errors
        return batch


_in_worker = False  # True in a grain worker process (set by its init function)


def _mark_worker(*_) -> None:
    global _in_worker
    _in_worker = True


def _new_clips(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed ``uint8`` batch array: in a worker process, in shared memory, where grain passes it to
    the main process by name instead of copying it there (a batch of 8 clips at 16x224x224 is 19 MB)."""
    if _in_worker:
        return grain.multiprocessing.SharedMemoryArray(shape, np.uint8)  # new shared memory reads as zeros
    return np.zeros(shape, np.uint8)


class _Stream:
    """``build(k)`` for ``k = start, start + 1, ... < stop``, computed ahead by the workers."""

    def __init__(self, key, build: Callable[[int], dict], start: int, stop: int, workers: int, prefetch: int):
        self.key, self.position = key, start
        ds = grain.MapDataset.range(start, stop).map(build)
        if workers > 0:
            if not flags.FLAGS.is_parsed():  # grain reads absl flags (unparsed outside absl.app)
                flags.FLAGS.mark_as_parsed()
            ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
            options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
            ds = ds.mp_prefetch(options, worker_init_fn=_mark_worker)
        else:  # a thread of this process
            ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
        self.iterator = iter(ds)

    def close(self):
        if hasattr(self.iterator, "close"):
            self.iterator.close()


class Loader:
    """Persistent streams of batches from ``workers`` processes (0: a thread of this process)."""

    def __init__(self, workers: int = 0, prefetch: int = 2):
        self.workers, self.prefetch = int(workers), max(1, int(prefetch))
        self.skipped = source.SkippedFiles()
        self._streams: dict[str, _Stream] = {}
        atexit.register(_close_all, weakref.ref(self))

    def batches(
        self, name: str, key, build: Callable[[int], dict], start: int, count: int, stop: int
    ) -> Iterator[dict]:
        """Batches ``build(start) .. build(start + count - 1)`` from the stream ``name``, which continues
        up to ``stop`` in the background. ``key`` identifies ``build``: another key restarts the stream."""
        stream = self._streams.get(name)
        if stream is None or stream.key != key or stream.position != start:
            if stream is not None:
                stream.close()
            stream = self._streams[name] = _Stream(key, build, start, stop, self.workers, self.prefetch)
        for _ in range(count):
            batch = next(stream.iterator)
            stream.position += 1
            self.skipped.record(batch.pop("errors"))
            yield batch

    def position(self, name: str) -> int | None:
        """The next batch index of stream ``name`` (None if it has not started)."""
        stream = self._streams.get(name)
        return None if stream is None else stream.position

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


def _close_all(ref) -> None:
    loader = ref()
    if loader is not None:
        loader.close()
