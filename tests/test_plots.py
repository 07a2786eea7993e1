"""``python -m semicnn_jax.plots``: curves from metrics.jsonl and a clip's features, as PNGs."""

import json
import os
import shutil
import subprocess
import sys

import demo_run
import matplotlib.image
import numpy as np
import pytest
from commands import run_command

from semicnn_jax import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny run (2 epochs) and a copy of it recorded as another model: {workdir: config}."""
    tiny_run, config = demo_run.shared_tiny_run(tmp_path_factory)

    def build(root):
        first, twin = os.path.join(root, "semi"), os.path.join(root, "twin")
        shutil.copytree(tiny_run, first)
        shutil.copytree(first, twin)
        with open(os.path.join(twin, "run.json")) as f:
            record = json.load(f)
        with open(os.path.join(twin, "run.json"), "w") as f:
            json.dump(dict(record, model="resnet18_3d"), f)

    root = demo_run.shared_dir(tmp_path_factory, "plots_runs", build)
    return {os.path.join(root, "semi"): config, os.path.join(root, "twin"): config}


def cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "semicnn_jax.plots", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_png(path, min_width, min_height):
    image = matplotlib.image.imread(path)  # raises on anything but a valid image
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    assert width <= 4000 and height <= 4000, (width, height)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_epoch_curves_from_the_metrics_file_match_the_tensorboard_events(runs, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    workdir = next(iter(runs))  # 2 epochs of 8 steps, train scalars every 4 steps
    events = event_accumulator.EventAccumulator(workdir)
    events.Reload()
    eval_steps = [e.step for e in events.Tensors("eval/loss")]
    assert len(eval_steps) == 2
    curves = plots.epoch_curves(plots.read_metrics(workdir))
    for tag in (
        "train/loss",
        "train/top1",
        "eval/loss",
        "eval/top1",
        "eval/top5",
        "eval/video_top1",
        "eval/video_top5",
        "learning_rate",
    ):
        logged = {e.step: float(np.asarray(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)}
        epochs, values = curves[tag]
        np.testing.assert_array_equal(epochs, [1, 2])
        np.testing.assert_allclose(values, [logged[s] for s in eval_steps], rtol=1e-6)

    # An epoch recorded again (re-run after a kill) keeps its last line; a torn last line is ignored.
    again = tmp_path / "again"
    again.mkdir()
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    rerun = json.dumps(dict(json.loads(lines[1]), **{"eval/loss": 0.5}))
    (again / "metrics.jsonl").write_text("\n".join([lines[0], lines[1], rerun, '{"epoch": 3, "eval/lo']) + "\n")
    epochs, values = plots.epoch_curves(plots.read_metrics(str(again)))["eval/loss"]
    np.testing.assert_array_equal(epochs, [1, 2])
    assert values[1] == 0.5


def test_curves_cli_overlays_runs_into_a_png(runs, tmp_path):
    out = tmp_path / "figs" / "curves.png"
    result = cli("curves", *runs, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(out)
    assert_png(out, 1000, 700)


def test_run_labels_name_the_model_and_tell_twins_apart(runs, tmp_path, monkeypatch):
    first, other = list(runs)
    assert plots.run_label(first) == "semi_resnet18" and plots.run_label(other) == "resnet18_3d"
    assert plots.run_label(str(tmp_path)) == os.path.basename(tmp_path)  # no run.json: the directory
    twin = tmp_path / "again"
    shutil.copytree(first, twin)
    seen = {}
    monkeypatch.setattr(plots.plt.Figure, "legend", lambda self, handles, labels, **kw: seen.setdefault("l", labels))
    plots.plot_curves([first, other, str(twin)], str(tmp_path / "c.png"))
    assert seen["l"] == ["semi_resnet18 (semi)", "resnet18_3d", "semi_resnet18 (again)"]


def test_curves_of_a_directory_without_evaluations_fail_naming_it(tmp_path, capsys):
    assert run_command(plots, ["curves", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 1
    assert f"{tmp_path}: no evaluations in its metrics.jsonl" in capsys.readouterr().err
    assert run_command(plots, ["curves", str(tmp_path / "nowhere")]) == 1
    assert f"{tmp_path / 'nowhere'}: no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.fixture(scope="module")
def clip_video(runs, tmp_path_factory):
    config = next(iter(runs.values()))
    clips, _ = demo_run.held_out_clips(config, 1, num_frames=10)  # two clips of 4 and a loop-padded one
    return demo_run.write_video(str(tmp_path_factory.mktemp("video") / "clip.mp4"), clips[0])


def test_features_cli_draws_frames_stage_maps_and_top5(runs, clip_video, tmp_path):
    out = tmp_path / "features.png"
    result = cli("features", f"--workdir={next(iter(runs))}", clip_video, "--out", str(out), "--checkpoint=latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_png(out, 800, 600)


def test_features_of_an_unreadable_video_fail_naming_it(runs, tmp_path, capsys):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video" * 100)
    code = run_command(plots, ["features", f"--workdir={next(iter(runs))}", str(bad), "--out", str(tmp_path / "f.png")])
    assert code == 1 and f"error: {bad}: " in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_stage_maps_are_channel_means_in_network_order():
    rng = np.random.default_rng(0)
    features = {
        "spatiotemporal": rng.random((1, 2, 4, 4, 8)),
        "spatial": rng.random((1, 16, 14, 14, 4)),
        "temporal": rng.random((1, 8, 14, 14, 4)),
        "pool5": rng.random((1, 2, 2, 3)),
    }
    maps = plots.stage_maps(features)
    assert list(maps) == ["spatial", "temporal", "spatiotemporal", "pool5"]
    np.testing.assert_allclose(maps["temporal"], features["temporal"][0].mean(-1), rtol=1e-6)
    assert maps["pool5"].shape == (1, 2, 2)
