"""Fine-tuning from a trained run (init_from a workdir), freezing up to a stage, and runs of every source.

One training on the fake UCF-101 release (3 classes, the release end to end: corrupt file skipped and
named once), fine-tuned on a 2-class folder dataset with ``freeze_until='spatial'``.
"""

import logging
import os

import fake_datasets
import fake_ucf101
import jax
import numpy as np
import pytest

from experiments import base
from semicnn_jax import convert, finetune, models, predict, train

CLIP = (1, 16, 112, 112, 3)  # traced only (nothing computed): any size that every model accepts


def top_level(mask) -> set[str]:
    return {path[0].key for path, frozen in jax.tree_util.tree_flatten_with_path(mask)[0] if frozen}


def abstract(name, **options):
    model = models.create(name, num_classes=5, width=1 / 16, **options)
    return model, models.abstract_variables(model, CLIP)


SPATIAL_RESNET18 = {"conv1", "bn1", "layer1_0", "layer1_1", "layer2_0"}


@pytest.mark.parametrize(
    "name,stage,expected",
    [
        ("semi_resnet18", "spatial", SPATIAL_RESNET18),
        ("semi_resnet18", "temporal", SPATIAL_RESNET18 | {"temporal_0"}),
        (
            "semi_resnet18",
            "spatiotemporal",
            SPATIAL_RESNET18 | {"temporal_0", "layer3a_0", "layer3b_0", "layer4_0", "layer4_1"},
        ),
        ("resnet18_3d", "layer2", {"conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1"}),
        ("resnet18_2d", "layer1", {"conv1", "bn1", "layer1_0", "layer1_1"}),
        ("c3d", "pool2", {"conv1a", "conv2a"}),
        ("vgg16_2d", "pool1", {"conv1_1", "conv1_2"}),
        (
            "semi_vgg16",
            "temporal",
            {
                "conv1_1",
                "conv1_2",
                "conv2_1",
                "conv2_2",
                "conv3_1",
                "conv3_2",
                "conv3_3",
                "conv4_1",
                "conv4_2",
                "temporal_conv",
            },
        ),
    ],
)
def test_freeze_until_masks_every_parameter_up_to_the_stage(name, stage, expected):
    model, variables = abstract(name)
    mask = finetune.stage_mask(model, variables, CLIP, stage)
    assert top_level(mask) == expected
    for module in expected:  # whole modules: every leaf of a frozen block is frozen
        assert all(jax.tree.leaves(mask[module])), module


@pytest.mark.parametrize("name", ["semi_resnet18", "semi_vgg16"])
def test_a_semi_models_spatial_stage_is_what_imagenet_fills(name):
    """Two independent definitions of the spatial stage: traced from the model, and convert's table."""
    model, variables = abstract(name)
    stage = finetune.stage_mask(model, variables, CLIP, "spatial")
    assert jax.tree.leaves(stage) == jax.tree.leaves(convert.pretrained_mask(name, variables["params"]))


def tiny(**overrides):
    config = base.get_config("semi_resnet18")
    config.model.width = 1 / 16
    config.model.options = {"lowering": "3d"}  # on CPU: half the compile time of "auto" (tests/test_layers.py: equal)
    config.num_frames, config.crop_size = 4, 32
    config.per_device_batch_size, config.accumulation_steps, config.num_epochs = 2, 1, 1
    config.dataset.workers = 0
    config.log_every_steps = 1
    for key, value in overrides.items():
        *path, last = key.split(".")
        target = config
        for part in path:
            target = target[part]
        target[last] = value
    return config


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"freeze_until": "layer9", "init_from": __file__},
            "freeze_until='layer9' is not a stage of semi_resnet18; valid: spatial, temporal, spatiotemporal",
        ),
        ({"freeze_until": "spatial"}, "freeze_until='spatial' needs config.init_from"),
        ({"init_from": "/nowhere/run"}, "init_from='/nowhere/run': no such file, and not a training run"),
    ],
)
def test_bad_fine_tuning_configs_are_refused(overrides, message):
    config = tiny(**{"dataset.name": "synthetic_motion", **overrides})
    with pytest.raises(ValueError, match=message):
        train.validate_config(config)


@pytest.fixture(scope="module")
def ucf_run(tmp_path_factory):
    """A 3-class run trained one epoch on the fake UCF-101 release (with its corrupt video)."""
    root = tmp_path_factory.mktemp("ucf")
    fake_ucf101.make_tree(str(root), height=48, width=64)
    workdir = str(tmp_path_factory.mktemp("runs") / "ucf")
    config = tiny(**{"dataset.name": "ucf101", "dataset.data_dir": str(root)})
    logs = logging.getLogger("absl")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logs.addHandler(handler)
    level = logs.level
    logs.setLevel(logging.INFO)
    try:
        state = train.train_and_evaluate(config, workdir)
    finally:
        logs.removeHandler(handler)
        logs.setLevel(level)
    return workdir, state, "\n".join(r.getMessage() for r in records)


def test_a_release_trains_end_to_end_naming_its_unreadable_video_once(ucf_run):
    workdir, state, log = ucf_run
    assert int(state.step) == 3  # 12 training videos, batches of 2 x 2 devices
    assert "epoch 1/1 step 3: train loss" in log and "video top1" in log
    assert "| 1 unreadable files skipped" in log
    assert log.count("v_HandStandPushups_g08_c01.avi") == 1  # named once
    assert predict.read_run_record(workdir)["class_names"] == list(fake_ucf101.CLASSES)


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("two_classes"))
    for i, rel in enumerate(
        ["train/a/1.mp4", "train/a/2.MKV", "train/b b/3.avi", "train/b b/4.mp4", "val/a/5.mp4", "val/b b/6.webm"]
    ):
        fake_datasets.video(os.path.join(root, rel), seed=i)
    return root


def test_fine_tune_to_two_classes_loads_matching_layers_a_new_classifier_and_freezes_the_spatial_stage(
    ucf_run, two_classes, tmp_path, monkeypatch, caplog
):
    workdir, trained, _ = ucf_run
    config = tiny(
        **{
            "dataset.name": "folder",
            "dataset.data_dir": two_classes,
            "init_from": workdir,
            "freeze_until": "spatial",
            "max_steps": 1,
        }
    )  # one step, no evaluation (nothing more to test)
    calls = []
    load = train.load_pretrained

    def spy(config, fresh, model):  # what the training loop starts from
        calls.append((fresh, *load(config, fresh, model), model))
        return calls[-1][1:3]

    monkeypatch.setattr(train, "load_pretrained", spy)
    with caplog.at_level(logging.INFO, logger="absl"):
        state = train.train_and_evaluate(config, str(tmp_path / "tuned"))
    assert "the run has 3 classes, this run 2: the classifier is freshly initialised" in caplog.text
    ((fresh, loaded, frozen, model),) = calls
    for module in trained.params:  # loaded where path and shape match: everything but the 3-class head
        if module == "fc":
            assert loaded["params"]["fc"]["kernel"].shape[-1] == 2
            jax.tree.map(np.testing.assert_array_equal, loaded["params"]["fc"], fresh["params"]["fc"])
        else:
            jax.tree.map(np.testing.assert_array_equal, loaded["params"][module], trained.params[module])
    jax.tree.map(np.testing.assert_array_equal, loaded["batch_stats"], trained.batch_stats)
    assert top_level(frozen) == SPATIAL_RESNET18 and all(jax.tree.leaves({m: frozen[m] for m in SPATIAL_RESNET18}))

    assert int(state.step) == 1
    for module in trained.params:
        same = all(jax.tree.leaves(jax.tree.map(np.array_equal, state.params[module], trained.params[module])))
        assert same == (module in SPATIAL_RESNET18), module  # frozen unchanged, the rest trained

    # freeze_pretrained with a run: everything it provided (nothing compiled: the captured fresh variables)
    config.freeze_until, config.freeze_pretrained = "", True
    _, provided = finetune.initialise(config, fresh, model)
    assert top_level(provided) == set(trained.params) - {"fc"}

    # predict reads the fine-tuned run: its own class names (the folders), its checkpoint
    from semicnn_jax import inference

    model, variables, run = predict.load_run(str(tmp_path / "tuned"), "latest")
    assert run.class_names == ("a", "b b") and run.dataset == "folder"
    result = predict.classify(
        inference.make_predict_fn(model), variables, run, os.path.join(two_classes, "val", "b b", "6.webm")
    )
    assert {name for name, _ in result.top5} == {"a", "b b"} and result.num_clips == 2
