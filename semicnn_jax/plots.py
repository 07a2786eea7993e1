"""Pictures of trained runs: training curves (the paper's Figure 2) and a clip's features (Figure 3).

    python -m semicnn_jax.plots curves runs/semi_resnet18 runs/resnet18_3d --out curves.png
    python -m semicnn_jax.plots features --workdir=runs/demo clip.avi --out features.png

``curves`` reads the runs' ``metrics.jsonl`` (one line per evaluated epoch) and draws loss, top-1
and top-5 accuracy (train; evaluation per clip and per video) and the learning rate against epochs,
one colour per run, named by its model. ``features`` shows one clip of a video as the model sees it
(its ``num_frames`` frames after the evaluation crop), the channel-averaged maps of every stage the
model reports with ``return_features=True`` (semi models: spatial, temporal, spatio-temporal),
each map under the input frames it covers, and the video-level top-5 of ``semicnn_jax.predict``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

# ---------------------------------------------------------------------------- metrics.jsonl


def read_metrics(workdir: str) -> list[dict]:
    """The run's evaluations from ``metrics.jsonl``, one per epoch in epoch order (an epoch recorded
    twice, e.g. re-run after a kill, keeps its last line; a half-written last line is ignored)."""
    by_epoch = {}
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                by_epoch[record["epoch"]] = record
    except FileNotFoundError:
        return []
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def epoch_curves(records: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch curves ``{tag: (epochs, values)}`` of every number the evaluations recorded."""
    tags = {tag for record in records for tag, value in record.items() if "/" in tag or tag == "learning_rate"}
    curves = {}
    for tag in sorted(tags):
        points = [(r["epoch"], r[tag]) for r in records if isinstance(r.get(tag), (int, float))]
        if points:
            epochs, values = zip(*points)
            curves[tag] = (np.array(epochs), np.array(values, np.float64))
    return curves


def run_label(workdir: str) -> str:
    """The run's model (run.json), or its directory's name."""
    try:
        with open(os.path.join(workdir, "run.json")) as f:
            return json.load(f)["model"]
    except (OSError, ValueError, KeyError):
        return os.path.basename(os.path.normpath(workdir))


@dataclasses.dataclass(frozen=True)
class Series:
    tag: str
    split: str  # legend entry ("" for none)
    style: str = "-"
    marker: str = "o"
    scale: float = 1.0  # 100: drawn in %


TRAIN, CLIP, VIDEO = dict(style="-"), dict(style="--"), dict(style=":", marker="s")  # video: hollow squares
PANELS = (  # (title, y label, series, y scale)
    (
        "Loss",
        "cross-entropy loss",
        (Series("train/loss", "train", **TRAIN), Series("eval/loss", "eval (clip)", **CLIP)),
        "linear",
    ),
    (
        "Top-1 accuracy",
        "top-1 accuracy (%)",
        (
            Series("train/top1", "train", scale=100, **TRAIN),
            Series("eval/top1", "eval (clip)", scale=100, **CLIP),
            Series("eval/video_top1", "eval (video)", scale=100, **VIDEO),
        ),
        "linear",
    ),
    (
        "Top-5 accuracy",
        "top-5 accuracy (%)",
        (
            Series("eval/top5", "eval (clip)", scale=100, **CLIP),
            Series("eval/video_top5", "eval (video)", scale=100, **VIDEO),
        ),
        "linear",
    ),
    ("Learning rate (set at the end of each epoch)", "learning rate", (Series("learning_rate", ""),), "log"),
)


def plot_curves(workdirs: Sequence[str], out: str) -> str:
    """Draws the runs' curves into ``out`` (PNG); ValueError naming a run without evaluations."""
    runs = []
    for workdir in workdirs:
        if not os.path.isdir(workdir):
            raise ValueError(f"{workdir}: no such run directory")
        curves = epoch_curves(read_metrics(workdir))
        if not curves:
            raise ValueError(f"{workdir}: no evaluations in its metrics.jsonl; has it finished an epoch?")
        runs.append((workdir, run_label(workdir), curves))
    labels = [label for _, label, _ in runs]
    # Two runs of the same model are told apart by their directory.
    labels = [
        f"{label} ({os.path.basename(os.path.normpath(w))})" if labels.count(label) > 1 else label
        for (w, _, _), label in zip(runs, labels)
    ]
    colours = plt.get_cmap("tab10").colors

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    for ax, (title, ylabel, series, yscale) in zip(axes.flat, PANELS):
        for i, (_, _, curves) in enumerate(runs):
            colour = colours[i % len(colours)]
            for line in series:
                if line.tag in curves:
                    epochs, values = curves[line.tag]
                    ax.plot(
                        epochs,
                        values * line.scale,
                        line.style,
                        color=colour,
                        marker=line.marker,
                        markersize=6 if line.marker == "s" else 3.5,
                        markerfacecolor="none" if line.marker == "s" else colour,
                        linewidth=1.8,
                        drawstyle="steps-post" if yscale == "log" else "default",
                    )
        ax.set_title(title, fontsize=13)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_yscale(yscale)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if series[0].scale == 100:
            ax.set_ylim(-2, 102)
        if len(series) > 1:  # what each line style means, in grey
            handles = [
                plt.Line2D(
                    [],
                    [],
                    color="0.3",
                    linestyle=line.style,
                    linewidth=1.8,
                    **(dict(marker="s", markerfacecolor="none") if line.marker == "s" else {}),
                )
                for line in series
            ]
            ax.legend(
                handles,
                [line.split for line in series],
                loc="best",
                fontsize=9,
                title="split",
                title_fontsize=9,
                handlelength=4,
            )
    handles = [plt.Line2D([], [], color=colours[i % len(colours)], linewidth=3) for i in range(len(runs))]
    fig.suptitle("Training curves (one colour per run)", fontsize=15)
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(runs), 4),
        fontsize=12,
        title="model",
        title_fontsize=11,
    )
    _save(fig, out)
    return out


# ---------------------------------------------------------------------------- features


def plot_features(
    workdir: str, video_path: str, out: str, checkpoint: str = "best", clip_index: int | None = None
) -> str:
    """Draws ``video_path``'s clip (the middle one by default), the model's channel-averaged stage
    features and the video-level top-5 into ``out`` (PNG). Raises ``predict.RunError`` /
    ``video.VideoError`` naming what cannot be read."""
    import jax
    import jax.numpy as jnp

    from semicnn_jax import inference, predict
    from semicnn_jax.data import video

    model, variables, run = predict.load_run(workdir, checkpoint)
    frames = video.read_video(video_path)  # all of them: the drawn clip's frame numbers need the length
    clips = video.eval_clips(frames, run.num_frames, run.crop_size)
    prediction = predict.predict_clips(inference.make_predict_fn(model), variables, run, clips, name=video_path)
    index = len(clips) // 2 if clip_index is None else clip_index
    if not 0 <= index < len(clips):
        raise ValueError(f"--clip={clip_index}: {video_path} has {len(clips)} clips")
    clip = clips[index]
    _, features = inference.make_features_fn(model)(variables, inference.normalize(jnp.asarray(clip[None])))
    maps = stage_maps(jax.device_get(features))

    T = run.num_frames
    ncols = T + 1  # the last, narrow column holds each feature row's colour bar
    nrows = 1 + len(maps) + 1
    fig = plt.figure(figsize=(max(10.0, 1.15 * T + 2.5), 1.35 * (1 + len(maps)) + 2.6 + 0.9))
    grid = fig.add_gridspec(
        nrows,
        ncols,
        width_ratios=[1] * T + [0.12],
        height_ratios=[1] * (1 + len(maps)) + [1.5],
        hspace=0.45,
        wspace=0.08,
        left=0.12,
        right=0.95,
        top=0.9,
        bottom=0.07,
    )

    frame_numbers = video.loop_indices(int(video.eval_clip_starts(len(frames), T)[index]), T, len(frames))
    for t in range(T):
        ax = fig.add_subplot(grid[0, t])
        ax.imshow(clip[t])
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"frame {frame_numbers[t]}", fontsize=8)
        if t == 0:
            _row_label(ax, f"input\n{T}×{run.crop_size}×{run.crop_size}")

    for row, (name, fmap) in enumerate(maps.items(), start=1):
        length = fmap.shape[0]
        vmin, vmax = float(fmap.min()), float(fmap.max())
        image = None
        for t in range(length):
            # Map t of a stage with `length` time steps covers input frames [t T / length, (t+1) T / length).
            first, last = round(t * T / length), max(round((t + 1) * T / length), round(t * T / length) + 1)
            ax = fig.add_subplot(grid[row, first:last])
            image = ax.imshow(fmap[t], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if t == 0:
                _row_label(ax, f"{name}\n{'×'.join(map(str, fmap.shape))}")
        cax = fig.add_subplot(grid[row, T])
        fig.colorbar(image, cax=cax).ax.tick_params(labelsize=7)

    ax = fig.add_subplot(grid[nrows - 1, 1 : T - 1] if T > 3 else grid[nrows - 1, :T])
    names, probs = zip(*prediction.top5)
    y = np.arange(len(names))[::-1]
    ax.barh(y, np.array(probs) * 100, color="tab:blue")
    ax.set_yticks(y, names)
    ax.set_xlim(0, 100)
    ax.set_xlabel("probability (%)")
    for yi, p in zip(y, probs):  # the value after the bar, or inside a long one
        inside = p > 0.85
        ax.text(
            100 * p - 1 if inside else 100 * p + 1,
            yi,
            f"{100 * p:.1f}%",
            va="center",
            fontsize=9,
            ha="right" if inside else "left",
            color="white" if inside else "black",
        )
    ax.set_title(
        f"top-5, video level (softmax averaged over {prediction.num_clips} clip"
        f"{'s' if prediction.num_clips != 1 else ''})",
        fontsize=11,
    )

    clip_note = f"clip {index + 1} of {len(clips)}" if len(clips) > 1 else "its only clip"
    fig.suptitle(
        f"{os.path.basename(video_path)}: {clip_note} and {run.model}'s stage features (mean over "
        f"channels, T×H×W; each row on its own colour scale)\n{run.describe()}",
        fontsize=11,
    )
    _save(fig, out)
    return out


def stage_maps(features: dict) -> dict[str, np.ndarray]:
    """Channel means ``[T', H', W']`` of the first clip's stage features, in network order.

    A jitted function returns its dicts sorted by key, so the order is rebuilt: every stage of the
    zoo's models only shrinks the map, so deeper stages have fewer positions (ties: by name).
    """
    maps = {name: np.asarray(f)[0].astype(np.float32).mean(-1) for name, f in features.items()}
    maps = {name: m.reshape((1,) * (3 - m.ndim) + m.shape) for name, m in maps.items()}
    return dict(sorted(maps.items(), key=lambda item: (-item[1].size, item[0])))


def _row_label(ax, text: str) -> None:
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=9, labelpad=8)


def _save(fig, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------- command line


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (defined only when it runs, so importing this module defines none)."""
    flags.DEFINE_string("out", None, "PNG to write (default: curves.png or features.png).", flag_values=values)
    flags.DEFINE_string("workdir", None, "features: the training run's directory.", flag_values=values)
    flags.DEFINE_string("checkpoint", "best", "features: best, latest or a step number.", flag_values=values)
    flags.DEFINE_integer(
        "clip",
        None,
        "features: which of the video's clips to show, from 0 (default: the middle one).",
        flag_values=values,
    )


USAGE = (
    "usage: python -m semicnn_jax.plots curves RUN [RUN ...] [--out=curves.png]\n"
    "       python -m semicnn_jax.plots features --workdir=RUN VIDEO [--out=features.png] [--checkpoint=best]"
)


def main(argv: Sequence[str], values: flags.FlagValues = flags.FLAGS) -> int:
    """``curves RUN...`` or ``features VIDEO``; 1 and a message naming what cannot be read."""
    command, args = (argv[1], list(argv[2:])) if len(argv) > 1 else (None, [])
    if (
        command not in ("curves", "features")
        or not args
        or (command == "features" and (len(args) != 1 or not values.workdir))
    ):
        raise app.UsageError(USAGE)
    try:
        if command == "curves":
            out = plot_curves(args, values.out or "curves.png")
        else:
            from absl import logging

            logging.set_verbosity(logging.ERROR)
            out = plot_features(values.workdir, args[0], values.out or "features.png", values.checkpoint, values.clip)
    except ValueError as e:  # RunError, VideoError and bad arguments are ValueErrors naming the culprit
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
