"""Failure behaviour: damaged checkpoints named and skipped, bad config fields refused before any work,
unreadable epochs refused, a workdir's geometry kept, one line and a status for every failure."""

import errno
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import demo_run
import jax
import numpy as np
import pytest
from commands import run_command
from test_train import _Hooked

from experiments import base
from semicnn_jax import checkpoints, configs, exits, models, predict, train
from semicnn_jax.data import pipeline, prepare, video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(workdir, config, target state) of the session's tiny run (checkpoints at steps 8 and 16)."""
    workdir, config = demo_run.shared_tiny_run(tmp_path_factory)
    model = train.create_model(config, 8)
    variables = models.init_variables(model, (1, config.num_frames, config.crop_size, config.crop_size, 3), 0)
    return workdir, config, train.initial_state(config, variables, train.create_optimizer(config))


def data_files(step_dir):
    """The array data files of a checkpoint (orbax OCDBT: ``default/**/d/*``)."""
    found = [
        os.path.join(d, f)
        for d, _, names in os.walk(os.path.join(step_dir, "default"))
        for f in names
        if os.path.basename(d) == "d"
    ]
    assert found, step_dir
    return found


def zero_bytes(step_dir):
    """400 zeroed bytes in the middle of every data file (whatever part each holds)."""
    for path in data_files(step_dir):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.seek(max(size // 2 - 200, 0))
            f.write(bytes(min(400, size)))


def truncate(step_dir):
    for path in data_files(step_dir):
        os.truncate(path, os.path.getsize(path) // 3)


DAMAGE = {
    "zeroed_bytes": zero_bytes,
    "truncated": truncate,
    "no_metadata": lambda step_dir: os.remove(os.path.join(step_dir, "default", "_METADATA")),
    "no_item": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "default")),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_is_named_set_aside_and_the_previous_one_used(tiny, tmp_path, damage, caplog):
    source, config, target = tiny
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    newest = os.path.join(workdir, "checkpoints", "16")
    DAMAGE[damage](newest)

    _, _, info = predict.load_run(workdir, "latest")
    if damage == "no_metadata":  # predict restores into its own target, which needs no _METADATA:
        assert info.step == 16  # the digest proves the arrays it reads intact
    else:  # predict falls back too, and says so
        assert info.step == 8
        assert f"checkpoint {newest} is damaged" in caplog.text
        with pytest.raises(predict.RunError, match=f"{newest}: .*no intact checkpoint"):
            predict.load_run(workdir, "16")  # a step asked for by number: no fallback

    manager, state, step = checkpoints.restore_latest_good(
        lambda: train.checkpoint_manager(workdir, config), workdir, target
    )
    assert step == 8 and int(state.step) == 8
    assert manager.all_steps() == [8] and not os.path.exists(newest)
    assert [name.split("-")[0] for name in os.listdir(os.path.join(workdir, "damaged_checkpoints"))] == ["16"]
    reference = train.checkpoint_manager(source, config).restore(8)  # the intact original, read by orbax alone
    jax.tree.map(np.testing.assert_array_equal, state.params, reference["params"])


def test_a_config_that_shapes_the_state_otherwise_is_refused_and_nothing_moved(tiny, tmp_path):
    """Weight decay switched off on resume: the optimizer state has other arrays. A config error naming
    them, not a damaged checkpoint: every checkpoint stays where it is, config.json is the run's."""
    source, config, _ = tiny
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = f.read()
    with open(os.path.join(workdir, "run.json")) as f:
        run_record = f.read()
    with pytest.raises(exits.ConfigError, match=r"checkpoints/16 holds other arrays .*only in the checkpoint: "):
        demo_run.tiny_run(workdir, weight_decay=0.0, crop_size=24, allow_new_geometry=True)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "8"]
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == recorded
    with open(os.path.join(workdir, "run.json")) as f:
        assert f.read() == run_record  # allow_new_geometry rewrites it only once the start is accepted


OPTIMIZER_STATES = {  # config overrides and frozen parameters: each gives the optimizer state another layout
    "sgd, weight decay": ({"momentum": 0.0}, None),
    "sgd": ({"momentum": 0.0, "weight_decay": 0.0}, None),
    "momentum, first layer frozen": ({}, {"first": True, "second": False}),
    "momentum, second layer frozen": ({}, {"first": False, "second": True}),
}


def test_every_other_optimizer_layout_is_told_apart_even_where_it_holds_no_arrays(tmp_path):
    """Without momentum, weight decay on or off changes only where optax holds empty states; other frozen
    layers only where it holds masked (empty) nodes: told apart all the same, and the same layout passes."""
    params = {"first": {"kernel": np.ones((2, 3), np.float32)}, "second": {"bias": np.zeros(3, np.float32)}}

    def state(name):
        overrides, frozen = OPTIMIZER_STATES[name]
        tx = train.create_optimizer(demo_run.tiny_run_config(**overrides), frozen)
        return {"params": params, "opt_state": jax.device_get(tx.init(params))}

    for step, saved in enumerate(OPTIMIZER_STATES, start=1):
        manager = train.checkpoint_manager(str(tmp_path / saved.replace(" ", "_")), demo_run.tiny_run_config())
        checkpoints.save(manager, step, state(saved))
        for other in OPTIMIZER_STATES:
            if other == saved:
                checkpoints.check_layout(manager, step, state(other))
            else:
                with pytest.raises(exits.ConfigError, match=f"checkpoints/{step} holds other arrays"):
                    checkpoints.check_layout(manager, step, state(other))


def test_non_finite_weights_are_refused_and_with_every_checkpoint_damaged_nothing_is_guessed(tiny, tmp_path):
    source, config, target = tiny
    workdir = str(tmp_path / "run")
    shutil.copytree(source, workdir)
    manager, state, _ = checkpoints.restore_latest_good(
        lambda: train.checkpoint_manager(workdir, config), workdir, target
    )
    params = jax.tree.map(lambda x: x, state.params)
    params["fc"]["bias"] = np.full_like(params["fc"]["bias"], np.nan)
    checkpoints.save(manager, 24, state.replace(step=state.step + 8, params=params))
    with pytest.raises(checkpoints.DamagedCheckpoint, match="non-finite values in 1 arrays, e.g. params\\['fc'\\]"):
        checkpoints.restore_verified(manager, 24, lambda: manager.restore(24))  # as plain arrays: same digest
    _, _, info = predict.load_run(workdir, "latest")  # never NaN probabilities: the step before is used
    assert info.step == 16

    for step in (16, 8):
        zero_bytes(os.path.join(workdir, "checkpoints", str(step)))
    with pytest.raises(checkpoints.DamagedCheckpoint, match="none of its 3 checkpoints is intact"):
        checkpoints.restore_latest_good(lambda: train.checkpoint_manager(workdir, config), workdir, target)


def test_the_digest_changes_with_any_array_and_stale_save_folders_are_removed(tiny, tmp_path):
    _, _, target = tiny
    before = checkpoints.digest(target)
    assert set(before) == {"step", "epoch", "params", "batch_stats", "opt_state", "plateau_state", "rng"}
    leaves, treedef = jax.tree.flatten(target.batch_stats)
    leaves[-1] = np.asarray(leaves[-1]).copy()
    leaves[-1].flat[0] += 1e-7
    after = checkpoints.digest(target.replace(batch_stats=jax.tree.unflatten(treedef, leaves)))
    assert [k for k in before if before[k] != after[k]] == ["batch_stats"]

    for name in ("24.orbax-checkpoint-tmp-1733", "8"):
        os.makedirs(tmp_path / name)
    assert checkpoints.remove_stale_temporaries(str(tmp_path)) == ["24.orbax-checkpoint-tmp-1733"]
    assert os.listdir(tmp_path) == ["8"]


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("checkpoint_every_epochs", 0, "an integer >= 1"),
        ("log_every_steps", 0, "an integer >= 1"),
        ("keep_checkpoints", -3, "an integer >= 1"),
        ("batch_size", 0, "an integer >= 1 \\(or -1\\)"),
        ("learning_rate", float("nan"), "a finite number in \\(0, inf\\)"),
        ("learning_rate", 0.0, "a finite number in \\(0, inf\\)"),
        ("momentum", 1.0, "a finite number in \\[0, 1\\)"),
        ("plateau_factor", 1.0, "a finite number in \\(0, 1\\)"),
        ("weight_decay", float("inf"), "a finite number in \\[0, inf\\)"),
        ("dataset.eval_size", 0, "an integer >= 1"),
        ("dataset.val_fraction", 1.0, "a finite number in \\(0, 1\\)"),
        ("dataset.max_unreadable_fraction", 1.5, "a finite number in \\[0, 1\\]"),
        ("dataset.split", 4, "one of 1, 2, 3"),
    ],
)
def test_every_numeric_field_is_checked_naming_it(field, value, message):
    config = demo_run.tiny_run_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(exits.ConfigError, match=f"config.{field}={value!r} must be {message}"):
        configs.check(config)


def test_unknown_fields_are_refused_with_the_nearest_name_and_every_experiment_passes():
    config = base.get_config()
    config.learnin_rate = 0.1  # a typo in a config file adds a field nobody reads
    with pytest.raises(
        exits.ConfigError, match="config.learnin_rate is not a field of this project; did you mean learning_rate\\?"
    ):
        configs.check(config)
    config = base.get_config()
    config.dataset.eval_sise = 3
    with pytest.raises(exits.ConfigError, match="did you mean dataset.eval_size"):
        configs.check(config)
    experiments = [
        f[:-3] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".py") and not f.startswith("_")
    ]
    assert len(experiments) >= 18
    for name in experiments:
        module = __import__(f"experiments.{name}", fromlist=["get_config"])
        configs.check(module.get_config())  # every shipped config is accepted as it is


def test_the_command_refuses_bad_fields_in_one_line_with_status_2_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    for override, line in (
        (
            "--config.learning_rat=0.1",
            "error: --config.learning_rat is not a config field; did you mean learning_rate?",
        ),
        ("--config.checkpoint_every_epochs=0", "error: config.checkpoint_every_epochs=0 must be"),
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "semicnn_jax.main",
                f"--workdir={workdir}",
                "--config=experiments/demo.py",
                override,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == exits.USAGE, result.stderr
        assert line in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len([x for x in result.stderr.splitlines() if x.startswith("error:")]) == 1
    assert not workdir.exists()


# ---------------------------------------------------------------------------- the run


def test_an_epoch_without_one_readable_example_is_refused_and_nothing_saved(tmp_path, monkeypatch):
    create = pipeline.create
    unreadable = lambda n, batch: dict(batch, mask=np.zeros_like(batch["mask"]))  # noqa: E731
    monkeypatch.setattr(pipeline, "create", lambda c: _Hooked(create(c), unreadable))
    workdir = tmp_path / "run"
    with pytest.raises(exits.Failure, match="epoch 1: none of the training examples could be read"):
        train.train_and_evaluate(demo_run.tiny_run_config(num_epochs=1), str(workdir))
    assert os.listdir(workdir / "checkpoints") == []
    assert not (workdir / "metrics.jsonl").exists()


def test_a_workdir_keeps_its_geometry_unless_allowed(tmp_path):
    workdir = str(tmp_path)
    record = {
        "model": "semi_resnet18",
        "model_options": {"width": 0.5},
        "num_classes": 8,
        "num_frames": 16,
        "crop_size": 112,
        "dataset": "ucf101",
    }
    assert train.check_run_record(workdir, record)  # a new run: to be written
    train.write_run_record(workdir, record)
    assert not train.check_run_record(workdir, dict(record))  # the same run resumes
    other = dict(record, crop_size=160, num_frames=8)
    with pytest.raises(
        exits.ConfigError,
        match="num_frames=16, crop_size=112; this config has num_frames=8, crop_size=160.*allow_new_geometry=True",
    ):
        train.check_run_record(workdir, other)
    assert train.check_run_record(workdir, other, allow_new_geometry=True)
    assert json.load(open(os.path.join(workdir, "run.json"))) == record  # written only once the start is accepted
    train.write_run_record(workdir, other)
    assert json.load(open(os.path.join(workdir, "run.json"))) == other  # predict reads the new clips


def test_metrics_keep_one_line_per_epoch_after_a_restart(tmp_path):
    lines = [json.dumps({"epoch": e, "step": 8 * e, "eval/top1": e / 10}) for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"epoch": 4, "st')  # killed mid-line
    train.truncate_metrics(str(tmp_path), 2)  # the checkpoint restored is epoch 2's
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"


def test_operational_failures_end_in_one_line_and_their_status(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(exits.Failure, match=f"--workdir={a_file}/run cannot be written"):
        train.prepare_workdir(str(a_file / "run"))

    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "16"))

    assert exits.run(disk_full)([]) == exits.FAILED
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on the device of {tmp_path}")
    trace = err[0].split("(traceback: ")[1].rstrip(")")
    assert "OSError" in open(trace).read()
    os.remove(trace)

    def preempted(argv):
        raise exits.Preempted(5)

    assert exits.run(preempted)([]) == exits.PREEMPTED == 75
    assert "stopped at step 5" in capsys.readouterr().err


# ---------------------------------------------------------------------------- videos as displayed, cut videos


def write_rotated(path, frames, degrees):
    """An H.264 .mp4 whose container says: display turned ``degrees`` counter-clockwise (a display
    matrix, as phones write for portrait video)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "4"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_a_rotated_stream_is_read_as_displayed_in_whole_frames_and_every_crop(tmp_path):
    frames = np.full((6, 48, 80, 3), 40, np.uint8)
    frames[:, :16, :16] = 255  # a white block in the stored frame's top-left corner
    path = write_rotated(tmp_path / "portrait.mp4", frames, -90)  # displayed turned 90 degrees clockwise
    shown = video.read_video(path)
    assert shown.shape == (6, 80, 48, 3)  # portrait, as a player shows it
    assert shown[:, :16, -16:].mean() > 240 and shown[:, :16, :16].mean() < 60  # the block moved top-right
    # Every crop straight from the decoded frames equals the crop of the displayed frames.
    for corner in video.CROP_POSITIONS:
        for flip in (False, True):
            params = {"scale": 0.6, "corner": corner, "flip": flip, "position": 0.0}
            got = video.read_train_clip(path, params, 4, 16)
            expected = video.train_clip(video.read_clip(path, 4, 0.0), params, 16)
            assert np.abs(got.astype(int) - expected).mean() < 3, (corner, flip)
    clips = video.read_eval_clips(path, 6, 16)
    np.testing.assert_allclose(clips[0].mean((0, 3)), video.eval_clips(shown, 6, 16)[0].mean((0, 3)), atol=4)
    copy = str(tmp_path / "prepared" / "portrait.mp4.avi")  # a prepared copy is stored upright
    assert prepare.prepare_one(path, copy, 4, 3) == {"frames": 6}
    assert video.probe_num_frames(copy) == 6 and np.abs(video.read_video(copy).astype(int) - shown).mean() < 1
    small = str(tmp_path / "prepared" / "portrait small.mp4.avi")  # and at most 24 pixels on its short side
    assert prepare.prepare_one(path, small, 4, 3, short_side=24) == {"frames": 6}
    assert prepare.stored_size(1280, 720, 240) == (426, 240) and prepare.stored_size(321, 241, 256) == (320, 240)
    halved = shown.reshape(6, 40, 2, 24, 2, 3).mean((2, 4))  # area scaling by exactly 1/2: 2x2 means
    assert np.abs(video.read_video(small) - halved).mean() < 2


def test_prepare_keeps_colours_and_odd_frame_rates_and_refuses_a_size_change(tmp_path):
    """VP9 (like AV1, HEVC) says full range on a yuv420p frame, HD video BT.709: the copy, stored as BT.601
    video range, reads the same colours; a variable-rate mean (a big denominator) is encoded; a frame
    size change is an error."""
    frames = np.full((4, 32, 64, 3), 40, np.uint8)
    frames[:, :, 32:] = 200
    path = str(tmp_path / "full range.webm")
    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=25, options={"lossless": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.codec_context.color_range = 2
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, "rgb24").reformat(format="yuv420p", dst_color_range=2)
            frame.color_range = 2
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert next(video.iter_frames(path)).color_range == 2
    copy = str(tmp_path / "copy.avi")
    assert prepare.encode(video.iter_frames(path), copy, Fraction(600000, 19991), 4, 2) == 4
    assert np.abs(video.read_video(copy).astype(int) - video.read_video(path)).max() <= 3  # passed as is: 15
    assert abs(video.frame_rate(copy) - Fraction(600000, 19991)) < 1e-3

    hd = str(tmp_path / "bt709.mkv")  # HD and phone video: BT.709, which the copy cannot record
    with av.open(hd, "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.colorspace = 1
        for _ in range(2):
            frame = av.VideoFrame(32, 32, "yuv420p")
            for plane, level in zip(frame.planes, (100, 80, 200)):
                np.frombuffer(plane, np.uint8)[:] = level
            frame.colorspace = 1
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert prepare.encode(video.iter_frames(hd), str(tmp_path / "bt709.avi"), 25) == 2
    read, original = video.read_video(str(tmp_path / "bt709.avi")), video.read_video(hd)
    assert np.abs(read.astype(int) - original).max() <= 2  # passed as is, read as BT.601: 15 off

    def resized():  # 48x32, then 24x16
        for width in (48, 24):
            yield av.VideoFrame.from_ndarray(np.zeros((width * 2 // 3, width, 3), np.uint8), "rgb24")

    with pytest.raises(ValueError, match="frame size changes from 48x32 to 24x16 at frame 1"):
        prepare.encode(resized(), str(tmp_path / "resized.avi"), 25)
    assert sorted(os.listdir(tmp_path)) == ["bt709.avi", "bt709.mkv", "copy.avi", "full range.webm"]  # no partial file


def test_predict_warns_when_a_video_decodes_fewer_frames_than_declared(tiny, tmp_path, capsys):
    workdir, config, _ = tiny
    noise = np.random.default_rng(0).integers(0, 256, (60, 64, 64, 3), dtype=np.uint8)  # frames of many bytes
    path = demo_run.write_video(str(tmp_path / "cut.avi"), noise)
    os.truncate(path, os.path.getsize(path) // 2)  # a copy cut short: the AVI header still says 60 frames
    assert video.probe_num_frames(path) == 60
    assert run_command(predict, [f"--workdir={workdir}", path]) == 0
    err = capsys.readouterr().err
    decoded = len(video.read_video(path))
    assert 0 < decoded < 60 and f"warning: {path}: decoded {decoded} of the 60 frames its container declares" in err
