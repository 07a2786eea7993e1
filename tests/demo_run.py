"""Shared by the predict and plots tests: tiny demo runs, held-out clips and video files.

``train_tiny_demo(workdir)`` trains the demo's Semi-ResNet-18 (width 1/8, 8 x 48 x 48 clips of
``synthetic_motion``, the demo's recipe) until it classifies most held-out clips right;
``tiny_run(workdir)`` makes a run that learns nothing but has every file a run has, in seconds;
``write_video`` encodes uint8 frames with PyAV (FFmpeg).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from typing import Callable

import av
import numpy as np

from experiments import demo
from semicnn_jax import train
from semicnn_jax.data import synthetic_motion


def shared_dir(tmp_path_factory, name: str, build: Callable[[str], object]) -> str:
    """``build(path)`` once per test session, even across pytest-xdist workers: a worker that needs
    ``name`` while another builds it waits for it (an exclusive lock), then reuses it.

    xdist schedules single tests, not files, so both workers may need one module's fixture.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base directories are siblings in the session's directory
    path = os.path.join(str(root), name)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(os.path.join(path, ".built")):
                shutil.rmtree(path, ignore_errors=True)  # what a failed build left
                build(path)
                open(os.path.join(path, ".built"), "w").close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# Held-out clips for the tests come from a seed the run never trains or evaluates on.
TEST_SEED = 20_240_607


def tiny_demo_config(**overrides):
    config = demo.get_config()
    config.model.name = "semi_resnet18"
    config.model.width = 0.125
    config.model.options = {}
    config.num_frames, config.crop_size = 8, 48
    config.dataset.train_size, config.dataset.eval_size = 4096, 128
    config.batch_size, config.per_device_batch_size = -1, 16  # 32 clips per step on the 2 test devices
    config.accumulation_steps = 1
    config.learning_rate, config.momentum, config.dampening, config.weight_decay = 0.02, 0.9, 0.0, 5e-4
    config.plateau_patience = 10  # no cut while the loss still sits at chance (width 1/16 or lr 0.03 stall there)
    config.num_epochs = 3
    config.log_every_steps = 32
    config.keep_checkpoints = 3
    config.seed = 0
    config.update_from_flattened_dict(overrides)  # dotted keys: {"model.width": 0.25, ...}
    return config


def train_tiny_demo(workdir: str, target_top1: float = 0.6, max_epochs: int = 9, min_epochs: int = 2, **overrides):
    """Trains the tiny demo run into ``workdir`` one epoch (128 steps) at a time until its eval top-1
    reaches ``target_top1`` (after at least ``min_epochs``), at most ``max_epochs``.

    When learning takes off varies with the seed and the platform (after 250 to 700 steps: the loss
    sits at chance first), so a fixed budget would be either wasteful or flaky. Each call resumes
    the run from its latest checkpoint, as ``python -m semicnn_jax.main`` would. Returns the config
    and the last eval top-1.
    """
    top1 = 0.0
    for epochs in range(min_epochs, max_epochs + 1):
        config = tiny_demo_config(num_epochs=epochs, **overrides)
        train.train_and_evaluate(config, str(workdir))
        top1 = last_metrics(workdir)["eval/top1"]
        if top1 >= target_top1:
            break
    return config, top1


DEMO_RUN_OVERRIDES = {"seed": 1}
DEMO_RUN_TARGET = 0.7


def trained_demo(tmp_path_factory) -> tuple[str, object]:
    """(workdir, config) of the tiny demo run trained until its eval top-1 reaches ``DEMO_RUN_TARGET``,
    built once per test session and shared by the test modules that need a model that has learnt."""
    workdir = shared_dir(
        tmp_path_factory,
        "trained_demo_run",
        lambda path: train_tiny_demo(path, target_top1=DEMO_RUN_TARGET, max_epochs=8, **DEMO_RUN_OVERRIDES),
    )
    top1 = last_metrics(workdir)["eval/top1"]
    assert top1 >= DEMO_RUN_TARGET, f"the tiny demo run did not learn (eval top-1 {top1:.2f}); retune it"
    return workdir, tiny_demo_config(**DEMO_RUN_OVERRIDES)


def last_metrics(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return json.loads(f.read().splitlines()[-1])


def tiny_run_config(**overrides):
    """A run that learns nothing but has every file of one (2 epochs of 8 steps at 4 x 32 x 32: seconds
    of compute; the sizes of ``tests/test_train.py``'s runs, whose compilations the cache may hold)."""
    config = demo.get_config()
    config.model.name, config.model.width = "semi_resnet18", 1 / 16
    config.num_frames, config.crop_size = 4, 32
    config.dataset.train_size, config.dataset.eval_size = 64, 12
    config.per_device_batch_size, config.accumulation_steps = 4, 2
    config.num_epochs, config.log_every_steps = 2, 4
    config.update_from_flattened_dict(overrides)
    return config


def tiny_run(workdir: str, **overrides):
    config = tiny_run_config(**overrides)
    train.train_and_evaluate(config, str(workdir))
    return config


def shared_tiny_run(tmp_path_factory) -> tuple[str, object]:
    """(workdir, config) of one ``tiny_run`` per test session, shared by the modules that need the files
    of a finished run (two checkpoints, metrics, events) but not a model that has learnt. Read-only:
    a test that changes a run copies it first."""
    return shared_dir(tmp_path_factory, "tiny_run", tiny_run), tiny_run_config()


def held_out_clips(config, count: int, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` synthetic-motion clips none of the run has seen, as uint8 frames (what a video file
    holds): ``(uint8 [count, T, size, size, 3], labels)``, labels cycling over the classes."""
    clips, labels = synthetic_motion.batch_for_indices(
        TEST_SEED, np.arange(count), num_frames or config.num_frames, config.crop_size
    )
    return np.round(np.asarray(clips) * 255).astype(np.uint8), np.asarray(labels)


CODECS = {".avi": ("mpeg4", {"qscale": "1"}), ".mp4": ("libx264", {"crf": "4"})}


def write_video(path: str, frames: np.ndarray, fps: int = 25) -> str:
    """Encodes ``uint8 [T, H, W, 3]`` RGB frames (H, W even) as ``path``: MPEG-4 Part 2 in .avi,
    H.264 in .mp4, both at high quality (close to the frames, not bit-exact)."""
    codec, options = CODECS[os.path.splitext(path)[1]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
