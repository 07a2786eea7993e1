"""``python -m semicnn_jax.predict``: a demo-trained run classifies synthetic-motion videos written to
.avi and .mp4 (slow); on the shared tiny run: JSON shape, clip averaging, checkpoint selection,
unreadable videos and missing runs named."""

import json
import os
import shutil
import subprocess
import sys

import demo_run
import numpy as np
import pytest
from commands import run_command
from test_train import assert_project_lines_first

from semicnn_jax import inference, predict, train
from semicnn_jax.data import synthetic_motion, video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VIDEOS = 32  # four per class, in each container


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config) of the session's tiny run: every file of a run, nothing learnt."""
    return demo_run.shared_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, config) of the tiny demo run, trained until its eval top-1 reaches 70% (once per session)."""
    return demo_run.trained_demo(tmp_path_factory)


def as_video_frames(clip):
    """A clip as a video file would hold it: twice the size, with grey side bars (4:3 frames), so
    prediction's centre crop and resize give back the clip."""
    big = clip.repeat(2, axis=1).repeat(2, axis=2)
    side = big.shape[2] // 6
    return np.pad(big, ((0, 0), (0, 0), (side, side), (0, 0)), constant_values=128)


def held_out_videos(config, folder, count: int) -> dict:
    """{'.avi': [(path, label)], '.mp4': [...]}: the same held-out clips in both containers."""
    clips, labels = demo_run.held_out_clips(config, count)
    return {
        ext: [
            (demo_run.write_video(str(folder / f"clip{i:02d}{ext}"), as_video_frames(clip)), int(label))
            for i, (clip, label) in enumerate(zip(clips, labels))
        ]
        for ext in (".avi", ".mp4")
    }


@pytest.fixture(scope="module")
def videos(run, tmp_path_factory):
    return held_out_videos(run[1], tmp_path_factory.mktemp("videos"), 2)


def cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}  # a newcomer's
    return subprocess.run(
        [sys.executable, "-m", "semicnn_jax.predict", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cli_classifies_avi_and_mp4_videos_well_above_chance_in_the_json_shape(trained, tmp_path):
    workdir, config = trained
    videos = held_out_videos(config, tmp_path, NUM_VIDEOS)
    paths = [p for ext in (".avi", ".mp4") for p, _ in videos[ext]]
    result = cli(f"--workdir={workdir}", "--json", *paths)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_project_lines_first(result.stderr, "semi_resnet18 from")
    answers = json.loads(result.stdout)
    assert [a["video"] for a in answers] == paths
    class_names = list(synthetic_motion.CLASS_NAMES)
    for answer in answers:
        assert set(answer) == {"video", "top5"}
        assert len(answer["top5"]) == 5 and all(set(e) == {"label", "prob"} for e in answer["top5"])
        probs = [e["prob"] for e in answer["top5"]]
        assert probs == sorted(probs, reverse=True) and 0 <= probs[-1] and sum(probs) <= 1 + 1e-5
        labels = {e["label"] for e in answer["top5"]}
        assert len(labels) == 5 and labels <= set(class_names)
    by_path = {a["video"]: a["top5"][0]["label"] for a in answers}
    for ext in (".avi", ".mp4"):
        hits = sum(by_path[p] == class_names[label] for p, label in videos[ext])
        # Chance is 1 in 8; the run scores >= 70% on its own eval clips (about as well on these videos).
        assert hits >= NUM_VIDEOS // 2, f"{ext}: {hits}/{NUM_VIDEOS} right"


def test_video_probabilities_are_the_mean_of_its_clips_softmax_any_length(run, tmp_path):
    """1 frame (one clip, the frame repeated) and 13 frames (whole clips, the last loop-padded)."""
    workdir, config = run
    model, variables, info = predict.load_run(workdir, "latest")
    predict_fn = inference.make_predict_fn(model)
    clips, _ = demo_run.held_out_clips(config, 2, num_frames=13)
    for frames, expected_clips in ((clips[0][:1], 1), (clips[1], -(-13 // config.num_frames))):
        path = demo_run.write_video(str(tmp_path / f"len{len(frames)}.mp4"), as_video_frames(frames))
        result = predict.classify(predict_fn, variables, info, path)
        assert result.num_clips == expected_clips and result.video == path
        decoded = video.read_eval_clips(path, config.num_frames, config.crop_size)  # as evaluation reads them
        by_clip = [predict_fn(variables, inference.normalize(c[None]))[0] for c in decoded]  # one at a time
        np.testing.assert_allclose(result.probabilities, np.mean(by_clip, axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(result.probabilities.sum(), 1.0, rtol=1e-5)


def test_checkpoint_best_latest_and_step_select_that_checkpoint(run, tmp_path):
    workdir, _ = run
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert len(steps) >= 2
    metrics = predict.read_metrics(workdir)
    _, latest, latest_info = predict.load_run(workdir, "latest")
    _, older, older_info = predict.load_run(workdir, str(steps[0]))
    _, _, best_info = predict.load_run(workdir)  # best is the default
    assert latest_info.step == steps[-1] and older_info.step == steps[0]
    assert older_info.epoch < latest_info.epoch
    assert best_info.step == max(steps, key=lambda s: (metrics[s]["eval/top1"], -metrics[s]["eval/loss"], s))
    assert not np.array_equal(latest["params"]["fc"]["kernel"], older["params"]["fc"]["kernel"])

    # A copy of the run whose records say the oldest checkpoint evaluated best: best picks it.
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    with open(os.path.join(copy, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(dict(metrics[steps[0]], **{"eval/top1": 1.0})) + "\n")
    _, best, info = predict.load_run(copy, "best")
    assert info.step == steps[0] and info.metrics["eval/top1"] == 1.0
    np.testing.assert_array_equal(best["params"]["fc"]["kernel"], older["params"]["fc"]["kernel"])


def test_select_step_ties_and_runs_without_evaluations():
    metrics = {
        10: {"eval/top1": 0.5, "eval/loss": 1.0},
        20: {"eval/top1": 0.5, "eval/loss": 0.9},
        30: {"eval/top1": 0.4, "eval/loss": 0.5},
    }
    assert predict.select_step([10, 20, 30, 40], "best", metrics, "d") == 20  # 40 has no evaluation
    assert predict.select_step([30, 10], "best", metrics, "d") == 10
    assert predict.select_step([10, 40], "best", {}, "d") == 40  # nothing evaluated: the latest
    assert predict.select_step([10, 40], "latest", metrics, "d") == 40
    assert predict.select_step([10, 40], " 10", metrics, "d") == 10
    with pytest.raises(predict.RunError, match="d: no checkpoint at step 15 \\(steps present: 10, 40\\)"):
        predict.select_step([10, 40], "15", metrics, "d")
    with pytest.raises(predict.RunError, match="expected best, latest or a step number"):
        predict.select_step([10, 40], "newest", metrics, "d")
    with pytest.raises(predict.RunError, match="d: no checkpoints"):
        predict.select_step([], "best", metrics, "d")


def test_unreadable_videos_are_named_and_the_others_still_answered(run, videos, tmp_path, capsys):
    workdir, _ = run
    good = [videos[".avi"][0][0], videos[".mp4"][1][0]]
    missing = str(tmp_path / "missing.avi")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    folder = str(tmp_path)
    bad = [missing, str(corrupt), str(empty), folder]
    code = run_command(predict, [f"--workdir={workdir}", "--json", good[0], *bad, good[1]])
    out, err = capsys.readouterr()
    assert code == 1
    assert [a["video"] for a in json.loads(out)] == good
    for path in bad:
        assert f"error: {path}: " in err
    assert f"error: {folder}: is a directory" in err
    assert "4 of 6 videos could not be read" in err

    code = run_command(predict, [f"--workdir={workdir}", good[0], good[1]])  # text: the video, then its top 5
    out, err = capsys.readouterr()
    assert code == 0 and "checkpoint step" in err
    lines = out.splitlines()
    assert len(lines) == 12 and lines[0] == f"{good[0]} (1 clip)" and lines[6] == f"{good[1]} (1 clip)"
    assert [line.split()[0] for line in lines[1:6]] == ["1.", "2.", "3.", "4.", "5."]
    assert lines[1].split()[1] in synthetic_motion.CLASS_NAMES and 0 < float(lines[1].split()[2]) <= 1


@pytest.mark.parametrize(
    "case", ["no_workdir", "no_run_json", "no_checkpoints", "no_such_step", "bad_name", "other_model"]
)
def test_a_missing_run_or_checkpoint_exits_non_zero_naming_it(run, videos, tmp_path, capsys, case):
    workdir, _ = run
    args, expected = ["--checkpoint=best"], None
    if case == "no_workdir":
        workdir = str(tmp_path / "nowhere")
        expected = f"{workdir}: no such run directory"
    elif case == "no_run_json":
        workdir = str(tmp_path)
        expected = f"{os.path.join(workdir, 'run.json')}: no such file"
    elif case == "no_checkpoints":
        os.makedirs(tmp_path / "run")
        shutil.copy(os.path.join(workdir, "run.json"), tmp_path / "run")
        workdir = str(tmp_path / "run")
        expected = f"{os.path.join(workdir, 'checkpoints')}: no such directory"
    elif case == "other_model":  # run.json says width 1/4: the checkpoint's arrays do not fit
        shutil.copytree(workdir, tmp_path / "run")
        workdir = str(tmp_path / "run")
        with open(os.path.join(workdir, "run.json")) as f:
            record = json.load(f)
        record["model_options"]["width"] = 0.25
        with open(os.path.join(workdir, "run.json"), "w") as f:
            json.dump(record, f)
        args, expected = ["--checkpoint=latest"], f"{os.path.join(workdir, 'checkpoints')}/"  # then the step
    elif case == "no_such_step":
        args = ["--checkpoint=7"]
        expected = "no checkpoint at step 7"
    else:
        args = ["--checkpoint=newest"]
        expected = "--checkpoint='newest': expected best, latest or a step number"
    code = run_command(predict, [f"--workdir={workdir}", *args, videos[".avi"][0][0]])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert expected in err, err
    if case == "other_model":
        assert "cannot restore semi_resnet18" in err and "width" in err, err


def test_the_cli_exit_status_of_a_missing_checkpoint(run, videos):
    result = cli(f"--workdir={run[0]}", "--checkpoint=999999", videos[".mp4"][0][0], timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    assert "no checkpoint at step 999999" in result.stderr and os.path.join(run[0], "checkpoints") in result.stderr


def test_normalisation_is_trainings():
    assert predict.normalize is train.normalize
