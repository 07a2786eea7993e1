"""Classifies videos with a trained run: the top-5 classes of each video, with probabilities.

    python -m semicnn_jax.predict --workdir=runs/demo clip.avi other.mp4
    python -m semicnn_jax.predict --workdir=runs/demo --checkpoint=latest --json clip.avi

Video level, as in evaluation: every non-overlapping ``num_frames`` clip of the video (the last one
loop-padded; centre crop of the short side resized to ``crop_size``; read by ``video.read_eval_clips``
like the evaluation loader), softmax averaged over the clips.
The model, its options, the clip size and the class names come from the run's ``run.json``; the
weights from one of its checkpoints (``best``: highest eval top-1 among the checkpoints present;
``latest``; or a step number). A video that cannot be read is named on stderr, the others are still
answered, and the exit status is 1. A missing run or checkpoint: a message naming it, exit status 1.
Probabilities that are not finite (weights damaged beyond what the checkpoint checks catch) are refused,
never printed.

Library use (one place for what ``plots features`` needs too)::

    model, variables, run = predict.load_run("runs/demo", "best")
    predict_fn = inference.make_predict_fn(model)   # jitted (variables, clips) -> probabilities
    result = predict.classify(predict_fn, variables, run, "clip.avi")
    result.top5          # [(class name, probability), ...], most probable first
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging

from semicnn_jax import checkpoints, compilation_cache, inference, models
from semicnn_jax.data import video
from semicnn_jax.inference import normalize  # training's ImageNet normalisation


class RunError(ValueError):
    """A workdir or checkpoint that cannot be used; the message names it and says why."""


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a prediction needs to know about a training run (from ``run.json`` and the checkpoint)."""

    workdir: str
    model: str
    model_options: dict
    class_names: tuple[str, ...]
    num_frames: int
    crop_size: int
    dataset: str
    step: int  # the checkpoint's training step
    epoch: int  # finished epochs at that checkpoint
    metrics: dict  # the evaluation at that step (metrics.jsonl), {} if none was recorded

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        text = f"{self.model} from {self.workdir}, checkpoint step {self.step} (epoch {self.epoch}"
        if "eval/top1" in self.metrics:
            text += f", eval clip top-1 {100 * self.metrics['eval/top1']:.1f}%"
        return text + ")"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The video-level prediction for one video."""

    video: str
    probabilities: np.ndarray  # float32 [num_classes], softmax averaged over the clips
    num_clips: int
    class_names: tuple[str, ...]
    num_frames: int = 0  # frames decoded (0: not read from a file)
    declared_frames: int = 0  # frames the container declares (0: it does not say)

    @property
    def truncated(self) -> bool:
        """Fewer frames decoded than the container declares (a cut or damaged file)."""
        return 0 < self.num_frames < self.declared_frames

    @property
    def top5(self) -> list[tuple[str, float]]:
        """The (up to) 5 most probable classes, most probable first (ties: lower class index first)."""
        order = np.argsort(-self.probabilities, kind="stable")[:5]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]

    def to_json(self) -> dict:
        return {"video": self.video, "top5": [{"label": name, "prob": p} for name, p in self.top5]}


# ---------------------------------------------------------------------------- the run


def read_run_record(workdir: str) -> dict:
    path = os.path.join(workdir, "run.json")
    if not os.path.isdir(workdir):
        raise RunError(f"{workdir}: no such run directory")
    if not os.path.isfile(path):
        raise RunError(
            f"{path}: no such file; is {workdir} a training workdir "
            "(python -m semicnn_jax.main --workdir=... writes it)?"
        )
    try:
        with open(path) as f:
            record = json.load(f)
        missing = [k for k in ("model", "class_names", "num_frames", "crop_size") if k not in record]
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: not a readable run record ({e})") from None
    if missing:
        raise RunError(f"{path}: the run record lacks {', '.join(missing)}")
    return record


def read_metrics(workdir: str) -> dict[int, dict]:
    """``workdir/metrics.jsonl`` by step (the last line of a step wins); {} without the file."""
    path = os.path.join(workdir, "metrics.jsonl")
    by_step = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                    by_step[int(record["step"])] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a killed run
    return by_step


def _checkpoint_manager(workdir: str) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise RunError(f"{directory}: no such directory; the run has no checkpoints")
    return ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers=ocp.PyTreeCheckpointHandler()
    )


def _shapes(tree) -> dict[str, tuple]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def shape_mismatches(model_variables, stored) -> list[str]:
    """The arrays whose shapes differ between the model's ``{'params', 'batch_stats'}`` and a
    checkpoint's tree (``'missing'`` where one side lacks it)."""
    want = _shapes(model_variables)
    have = _shapes({k: stored.get(k, {}) for k in model_variables}) if stored is not None else {}
    return [
        f"{key}: checkpoint {have.get(key, 'missing')}, model {want.get(key, 'missing')}"
        for key in sorted(set(want) | set(have))
        if want.get(key) != have.get(key)
    ]


def select_step(steps: Sequence[int], checkpoint: str | int, metrics: dict[int, dict], where: str) -> int:
    """The checkpoint step that ``checkpoint`` (``best``, ``latest`` or a step) names among ``steps``.

    ``best``: the highest eval top-1 in ``metrics`` (ties: lower eval loss, then the later step);
    the latest checkpoint when none of them has a recorded evaluation.
    """
    steps = sorted(int(s) for s in steps)
    if not steps:
        raise RunError(f"{where}: no checkpoints")
    checkpoint = str(checkpoint).strip()
    if checkpoint == "latest":
        return steps[-1]
    if checkpoint == "best":
        scored = [s for s in steps if "eval/top1" in metrics.get(s, {})]
        if not scored:
            return steps[-1]
        return max(scored, key=lambda s: (metrics[s]["eval/top1"], -metrics[s].get("eval/loss", 0.0), s))
    try:
        step = int(checkpoint)
    except ValueError:
        raise RunError(f"--checkpoint={checkpoint!r}: expected best, latest or a step number") from None
    if step not in steps:
        raise RunError(f"{where}: no checkpoint at step {step} (steps present: {', '.join(map(str, steps))})")
    return step


def load_run(workdir: str, checkpoint: str | int = "best") -> tuple[Any, dict, RunInfo]:
    """The run's model (``models.create`` with its recorded options, no BatchNorm sync), the
    checkpoint's ``{'params', 'batch_stats'}`` on the default device, and its :class:`RunInfo`.

    Raises RunError naming the workdir, file or checkpoint at fault.
    """
    record = read_run_record(workdir)
    options = dict(record.get("model_options", {}))
    class_names = tuple(record["class_names"])
    try:
        model = models.create(record["model"], num_classes=len(class_names), **options)
    except ValueError as e:
        raise RunError(f"{os.path.join(workdir, 'run.json')}: {e}") from None
    num_frames, crop_size = int(record["num_frames"]), int(record["crop_size"])

    metrics = read_metrics(workdir)
    # Restore only what inference needs, onto this host's device (the run may have trained on others).
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = models.abstract_variables(model, (1, num_frames, crop_size, crop_size, 3))
    target = {
        "params": abstract["params"],
        "batch_stats": abstract.get("batch_stats", {}),
        "epoch": jax.ShapeDtypeStruct((), jnp.int32),
    }
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), target)
    manager = _checkpoint_manager(workdir)
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    try:
        steps = sorted(manager.all_steps())
        chosen = select_step(steps, checkpoint, metrics, manager.directory)
        # best/latest fall back to the newest intact checkpoint; a step asked for by number does not.
        for step in checkpoints.candidates(chosen, steps, fallback=str(checkpoint).strip() in ("best", "latest")):
            where = f"{manager.directory}/{step}"
            with checkpoints.quiet_library_errors():
                try:
                    stored = getattr(manager.item_metadata(step), "tree", None)
                except Exception:  # unreadable metadata: the restore below names it
                    stored = None
            mismatches = shape_mismatches({k: target[k] for k in ("params", "batch_stats")}, stored)
            if stored is not None and mismatches:
                raise RunError(
                    f"{where}: cannot restore {record['model']} ({options}) of run.json from it: "
                    f"{len(mismatches)} arrays differ, e.g. {mismatches[0]}"
                )
            try:
                restored = checkpoints.restore_verified(manager, step, lambda: manager.restore(step, args=args))
                break
            except checkpoints.DamagedCheckpoint as e:
                damaged = e
                logging.error("checkpoint %s is damaged (%s)", e.where, e.reason)
        else:
            raise RunError(f"{damaged}; no intact checkpoint to fall back to")
    finally:
        manager.close()
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    run = RunInfo(
        workdir=workdir,
        model=record["model"],
        model_options=options,
        class_names=class_names,
        num_frames=num_frames,
        crop_size=crop_size,
        dataset=record.get("dataset", ""),
        step=step,
        epoch=int(restored["epoch"]),
        metrics=metrics.get(step, {}),
    )
    return model, variables, run


# ---------------------------------------------------------------------------- classification


def clip_batches(clips: np.ndarray, batch_size: int):
    """``clips [K, ...]`` in batches of ``min(batch_size, K rounded up to a power of 2)`` clips, the
    last zero-padded (so a few shapes compile, whatever the videos' lengths), each with the number of
    real clips it holds."""
    batch_size = min(batch_size, 1 << (len(clips) - 1).bit_length())
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        yield chunk, batch_size - pad


def classify_clips(predict_fn: Callable, variables, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Video-level probabilities of uint8 clips ``[K, T, S, S, 3]``: the mean of the clips' softmax,
    each clip normalised as in training (``inference.normalize``)."""
    total, count = None, 0
    for chunk, real in clip_batches(clips, batch_size):
        probs = np.asarray(predict_fn(variables, normalize(jnp.asarray(chunk))))[:real]
        total = probs.sum(0) if total is None else total + probs.sum(0)
        count += real
    return (total / count).astype(np.float32)


def predict_clips(
    predict_fn: Callable, variables, run: RunInfo, clips: np.ndarray, name: str = "", batch_size: int = 8
) -> Prediction:
    """The prediction for a video's evaluation clips ``uint8 [K, T, S, S, 3]``."""
    probs = classify_clips(predict_fn, variables, clips, batch_size)
    return Prediction(video=name, probabilities=probs, num_clips=len(clips), class_names=run.class_names)


def classify_frames(
    predict_fn: Callable, variables, run: RunInfo, frames: np.ndarray, name: str = "", batch_size: int = 8
) -> Prediction:
    """The prediction for decoded frames ``uint8 [T, H, W, 3]`` (any T >= 1, any size)."""
    clips = video.eval_clips(frames, run.num_frames, run.crop_size)
    return predict_clips(predict_fn, variables, run, clips, name, batch_size)


def classify(predict_fn: Callable, variables, run: RunInfo, path: str, batch_size: int = 8) -> Prediction:
    """The prediction for a video file, its clips read as evaluation reads them
    (``video.read_eval_clips``); ``video.VideoError`` naming it if it cannot be read."""
    frames = video.read_eval_frames(path, run.crop_size)
    prediction = predict_clips(
        predict_fn, variables, run, video.clips_of(frames, run.num_frames), str(path), batch_size
    )
    return dataclasses.replace(prediction, num_frames=len(frames), declared_frames=video.probe_num_frames(path))


# ---------------------------------------------------------------------------- command line


def format_text(prediction: Prediction) -> str:
    clips = f"{prediction.num_clips} clip{'s' if prediction.num_clips != 1 else ''}"
    width = max(len(name) for name, _ in prediction.top5)
    lines = [f"{prediction.video} ({clips})"]
    lines += [f"  {rank}. {name:<{width}}  {p:.4f}" for rank, (name, p) in enumerate(prediction.top5, 1)]
    return "\n".join(lines)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (defined only when it runs, so importing this module defines none)."""
    flags.DEFINE_string("workdir", None, "The training run's directory (run.json, checkpoints/).", flag_values=values)
    flags.DEFINE_string(
        "checkpoint", "best", "best (highest eval top-1, the default), latest, or a step number.", flag_values=values
    )
    flags.DEFINE_bool(
        "json", False, 'Print [{"video": path, "top5": [{"label": name, "prob": p}, ...]}, ...].', flag_values=values
    )
    flags.mark_flag_as_required("workdir", flag_values=values)


def main(argv: Sequence[str], values: flags.FlagValues = flags.FLAGS) -> int:
    """Classifies the videos named after the flags; 1 if the run or any video could not be used."""
    videos = list(argv[1:])
    if not videos:
        raise app.UsageError("name at least one video: python -m semicnn_jax.predict --workdir=RUN VIDEO...")
    logging.set_verbosity(logging.ERROR)  # orbax's notes on opening checkpoints read-only
    compilation_cache.configure()
    try:
        model, variables, run = load_run(values.workdir, values.checkpoint)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(run.describe(), file=sys.stderr)
    predict_fn = inference.make_predict_fn(model)
    results, failed = [], 0
    for path in videos:
        try:
            if os.path.isdir(path):
                raise video.VideoError(path, "is a directory; name the video files in it")
            prediction = classify(predict_fn, variables, run, path)
            if not np.all(np.isfinite(prediction.probabilities)):
                print(
                    f"error: {path}: the model's probabilities are not finite; the checkpoint's weights "
                    f"are damaged (try --checkpoint=latest or an earlier step)",
                    file=sys.stderr,
                )
                return 1
        except video.VideoError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        if prediction.truncated:
            print(
                f"warning: {path}: decoded {prediction.num_frames} of the {prediction.declared_frames} frames its "
                "container declares (a cut or damaged file); answered from those",
                file=sys.stderr,
            )
        results.append(prediction)
        if not values.json:
            print(format_text(prediction), flush=True)
    if values.json:
        print(json.dumps([r.to_json() for r in results], indent=2, allow_nan=False))
    if failed:
        print(f"error: {failed} of {len(videos)} videos could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
