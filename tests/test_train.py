"""The training loop: accumulation across devices, exact resume after SIGTERM, refusals, main."""

import functools
import json
import os
import signal
import subprocess
import sys

import demo_run
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import base
from semicnn_jax import exits, models, train
from semicnn_jax.data import pipeline
from semicnn_jax.data.source import DatasetInfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


tiny_config = demo_run.tiny_run_config  # width 1/16, 4 x 32 x 32 clips, 2 epochs of 8 steps


def test_accumulated_update_on_two_devices_equals_one_update_on_the_whole_batch():
    """k mini-batches x 2 devices through MultiSteps == one step on the concatenation, 1 device.

    C3D has no BatchNorm, so the batch split does not change the forward pass.
    """
    assert jax.local_device_count() == 2
    config = tiny_config(**{"model.name": "c3d", "model.options": {"dropout_rate": 0.0}})
    config.num_frames = 16
    model = train.create_model(config, num_classes=8)
    variables = models.init_variables(model, (1, 16, 32, 32, 3), config.seed)
    rng = np.random.default_rng(0)
    video = rng.uniform(size=(8, 16, 32, 32, 3)).astype(np.float32)
    label = rng.integers(0, 8, size=8).astype(np.int32)
    mask = np.ones(8, bool)

    config.accumulation_steps = 2
    tx = train.create_optimizer(config)
    state = train.replicate(train.initial_state(config, variables, tx))
    step = train.data_parallel(functools.partial(train.train_step, model=model, tx=tx))
    for half in (slice(0, 4), slice(4, 8)):
        state, _ = step(state, train.shard({"video": video[half], "label": label[half], "mask": mask[half]}))
    accumulated = train.unreplicate(state).params

    config.accumulation_steps = 1
    tx1 = train.create_optimizer(config)
    one_device = jax.pmap(
        functools.partial(train.train_step, model=model, tx=tx1), axis_name=train.AXIS, devices=jax.local_devices()[:1]
    )
    state1 = jax.tree.map(lambda x: np.asarray(x)[None], train.initial_state(config, variables, tx1))
    state1, _ = one_device(state1, jax.tree.map(lambda x: x[None], {"video": video, "label": label, "mask": mask}))
    whole = train.unreplicate(state1).params

    assert not np.allclose(accumulated["fc8"]["kernel"], variables["params"]["fc8"]["kernel"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), accumulated, whole)


class _Hooked:
    """Wraps a source; ``hook(n, batch)`` sees (and may replace) the n-th training batch (from 1)."""

    def __init__(self, source, hook):
        self.source, self.hook, self.count = source, hook, 0
        self.info = source.info

    def train_batches(self, *args):
        for batch in self.source.train_batches(*args):
            self.count += 1
            yield self.hook(self.count, batch)

    def __getattr__(self, name):  # everything else: the wrapped source's
        return getattr(self.source, name)


def sigterm_at(at):
    def hook(n, batch):
        if n == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    return hook


def nan_after(after):
    """Float frames in [0, 1] (as ``inference.normalize`` takes them), NaN from batch ``after + 1``: uint8
    frames cannot hold a NaN (cast, it became 0, and the loss went non-finite only by chance)."""

    def hook(n, batch):
        video = batch["video"].astype(np.float32) / 255.0
        return dict(batch, video=np.full_like(video, np.nan) if n > after else video)

    return hook


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_config()  # 8 steps per epoch, 2 epochs, accumulation 2
    uninterrupted = train.train_and_evaluate(config, str(tmp_path / "straight"))
    assert int(uninterrupted.step) == 16

    create = pipeline.create
    # SIGTERM while batch 6 is being loaded: with batches prefetched to the devices ahead of the step,
    # step 5 is the one in flight.
    monkeypatch.setattr(pipeline, "create", lambda c: _Hooked(create(c), sigterm_at(5 + train.PREFETCH - 1)))
    with pytest.raises(exits.Preempted) as stopped:
        train.train_and_evaluate(config, str(tmp_path / "killed"))
    assert stopped.value.step == 5  # mid-epoch, mid-accumulation
    assert os.listdir(tmp_path / "killed" / "checkpoints") == ["5"]
    monkeypatch.setattr(pipeline, "create", create)
    resumed = train.train_and_evaluate(config, str(tmp_path / "killed"))
    assert int(resumed.step) == 16 and int(resumed.epoch) == 2
    jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.batch_stats, uninterrupted.batch_stats)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(num_epochs=3)
    workdir = str(tmp_path / "run")
    create = pipeline.create
    monkeypatch.setattr(pipeline, "create", lambda c: _Hooked(create(c), nan_after(10)))
    with pytest.raises(train.NonFiniteLossError, match="loss became nan"):
        train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["8"]  # epoch 1's, nothing after


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model.name": "semi_resnet19"}, "unknown model 'semi_resnet19'"),
        ({"dataset.name": "ucf102"}, "dataset.name='ucf102' is unknown"),
        ({"batch_size": 7}, "batch_size=7 is not divisible by the 2 devices"),
        ({"model.options": {"head": "triple"}}, "head='triple'"),
        ({"per_device_batch_size": 0}, "config.per_device_batch_size=0 must be an integer >= 1"),
    ],
)
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    with pytest.raises(exits.ConfigError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_workdir_of_another_model_is_refused_and_left_alone(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    record = {"model": "c3d", "model_options": {}, "num_classes": 8}
    (workdir / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="holds a run of model 'c3d'"):
        train.train_and_evaluate(tiny_config(), str(workdir))
    assert json.loads((workdir / "run.json").read_text()) == record
    assert os.listdir(workdir) == ["run.json"]


def test_paper_configs_carry_the_recipe():
    for name, mini in (("semi_vgg16", 8), ("semi_resnet50", 4), ("resnet152_3d", 2)):
        config = base.get_config(name)
        assert config.per_device_batch_size * base.DEVICES * config.accumulation_steps == 256
        assert config.per_device_batch_size * base.DEVICES == mini
        assert (config.learning_rate, config.momentum, config.dampening, config.weight_decay) == (0.1, 0.9, 0.9, 1e-4)
        assert (config.plateau_factor, config.plateau_patience, config.num_epochs) == (0.1, 10, 50)
        assert (config.num_frames, config.crop_size, config.dataset.split) == (16, 224, 1)


def assert_project_lines_first(output: str, first_from: str) -> None:
    """The first line is the project's (from ``first_from``); no library banner anywhere."""
    assert first_from in output.splitlines()[0], output[:2000]
    for banner in (
        "backend 'tpu'",
        "oneDNN",
        "absl::InitializeLog",
        "cpu_feature_guard",
        "orbax-checkpoint version",
        "CheckpointManager",
        "Traceback",
    ):
        assert banner not in output, (banner, output[:3000])


def test_main_end_to_end_writes_checkpoints_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "semicnn_jax.main",
        f"--workdir={workdir}",
        "--config=experiments/demo.py",
        "--config.model.width=0.0625",
        "--config.num_frames=4",
        "--config.crop_size=32",
        "--config.dataset.train_size=32",
        "--config.dataset.eval_size=8",
        "--config.num_epochs=1",
        "--config.per_device_batch_size=4",
        "--config.accumulation_steps=2",
        "--config.log_every_steps=2",
    ]
    # As a newcomer runs it: no JAX platform chosen, TensorFlow's C++ logging at its default.
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/1 step 4: train loss" in result.stderr
    assert_project_lines_first(result.stderr, "main.py")

    assert os.listdir(workdir / "checkpoints") == ["4"]
    events = event_accumulator.EventAccumulator(str(workdir))
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/top1",
        "eval/loss",
        "eval/top1",
        "eval/top5",
        "eval/video_top1",
        "eval/video_top5",
        "learning_rate",
    } <= tags


def test_frozen_pretrained_parameters_stay_bit_identical(tmp_path):
    """init_from a converted torchvision file + freeze_pretrained: moved params never change."""
    import torchvision

    from semicnn_jax import convert

    config = tiny_config(
        **{
            "model.width": 1.0,
            "init_from": str(tmp_path / "semi_resnet18.msgpack"),
            "freeze_pretrained": True,
            "accumulation_steps": 1,
            "max_steps": 3,
        }
    )
    model = train.create_model(config, num_classes=8, axis_name=None)
    variables = models.init_variables(model, (1, 4, 32, 32, 3), config.seed)
    converted, moved = convert.from_torchvision("semi_resnet18", torchvision.models.resnet18().state_dict(), variables)
    assert moved == 387_648
    convert.save_variables(config.init_from, converted)

    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 3
    mask = convert.pretrained_mask("semi_resnet18", state.params)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), state.params, converted["params"])
    frozen_same = [s for s, m in zip(jax.tree.leaves(same), jax.tree.leaves(mask)) if m]
    trained_same = [s for s, m in zip(jax.tree.leaves(same), jax.tree.leaves(mask)) if not m]
    assert len(frozen_same) > 0 and all(frozen_same)
    assert not any(trained_same)  # every other parameter moved


class _ClipsOfVideos:
    """Eval source of 3 videos (classes 0, 1, 2) cut into 3, 2 and 1 clips, in batches of 4 (padded)."""

    def __init__(self, probs):
        self.info = DatasetInfo("fake", ("a", "b", "c", "d", "e", "f"), 0, 3)
        self.probs = probs  # [6 clips, 6 classes]

    def eval_batches(self, global_batch):
        videos = np.array([0, 0, 0, 1, 1, 2, 2, 2])  # the last two rows are padding
        labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
        mask = np.arange(8) < 6
        probs = np.concatenate([self.probs, self.probs[-1:], self.probs[-1:]])
        for s in (slice(0, 4), slice(4, 8)):
            yield {"video": probs[s], "label": labels[s], "mask": mask[s], "video_index": videos[s]}


def test_video_accuracy_averages_clip_probabilities_per_video():
    """Video 0 is wrong on 2 of its 3 clips but right on average; video 1 right on 1 of 2 clips but
    wrong on average; video 2 (1 clip) right. Clip top-1: 3/6; video top-1: 2/3."""
    probs = np.array(
        [
            [0.30, 0.35, 0.35, 0, 0, 0],  # video 0, label 0: clip wrong
            [0.30, 0.00, 0.70, 0, 0, 0],  #                    clip wrong
            [0.90, 0.10, 0.00, 0, 0, 0],  #                    clip right; mean -> 0
            [0.10, 0.60, 0.30, 0, 0, 0],  # video 1, label 1: clip right
            [0.00, 0.10, 0.90, 0, 0, 0],  #                    clip wrong; mean -> 2
            [0.00, 0.00, 0.80, 0.1, 0.05, 0.05],
        ],
        np.float32,
    )  # video 2, label 2: right
    logits = np.log(np.maximum(probs, 1e-30))

    def fake_eval_step(state, batch):  # sharded logits in, as a pmapped model would produce them
        x = jnp.asarray(batch["video"])
        flat = lambda a: jnp.reshape(a, (-1,) + a.shape[2:])
        sums = train.classification_metrics(flat(x), flat(batch["label"]), flat(batch["mask"]))
        return train.replicate(sums), jax.nn.softmax(x, axis=-1)

    result = train.evaluate(fake_eval_step, None, _ClipsOfVideos(logits), 4)
    assert result["top1"] == pytest.approx(3 / 6)
    assert result["video_top1"] == pytest.approx(2 / 3)
    assert result["video_top5"] == pytest.approx(1.0)


def test_unreadable_examples_do_not_count_in_the_training_loss():
    """An example with mask False (e.g. a corrupt video) has no effect on the gradient."""
    config = tiny_config(**{"model.name": "c3d", "model.options": {"dropout_rate": 0.0}, "accumulation_steps": 1})
    config.num_frames = 16
    model = train.create_model(config, num_classes=8)
    variables = models.init_variables(model, (1, 16, 32, 32, 3), config.seed)
    tx = train.create_optimizer(config)
    state = train.replicate(train.initial_state(config, variables, tx))
    step = train.data_parallel(functools.partial(train.train_step, model=model, tx=tx))
    rng = np.random.default_rng(1)
    video = rng.uniform(size=(4, 16, 32, 32, 3)).astype(np.float32)
    label = np.array([1, 2, 3, 4], np.int32)
    garbage = dict(
        video=np.concatenate([video[:2], rng.uniform(size=(2, 16, 32, 32, 3)).astype(np.float32)]),
        label=np.array([1, 2, 7, 7], np.int32),
    )
    first, _ = step(state, train.shard({"video": video, "label": label, "mask": np.array([1, 1, 0, 0], bool)}))
    second, _ = step(state, train.shard(dict(garbage, mask=np.array([1, 1, 0, 0], bool))))
    clean, _ = step(state, train.shard(dict(garbage, mask=np.ones(4, bool))))
    same = jax.tree.map(np.array_equal, first.params, second.params)
    assert all(jax.tree.leaves(same))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first.params, clean.params)))


def test_the_best_checkpoint_survives_a_restart(tmp_path):
    config = tiny_config(keep_checkpoints=2)
    state = {"w": np.zeros(3, np.float32)}

    def save(manager, step, top1):
        manager.save(step, args=train.ocp.args.StandardSave(state), metrics={"eval_top1": top1}, force=True)
        manager.wait_until_finished()

    manager = train.checkpoint_manager(str(tmp_path), config)
    for step, top1 in ((1, 0.9), (2, 0.1), (3, 0.2)):
        save(manager, step, top1)
    manager.close()
    manager = train.checkpoint_manager(str(tmp_path), config)  # a restarted run
    for step, top1 in ((4, 0.3), (5, 0.4)):
        save(manager, step, top1)
    assert manager.all_steps() == [1, 4, 5] and manager.best_step() == 1
    manager.close()
