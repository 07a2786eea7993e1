"""Training-step throughput of the paper's models: clips/s and peak device memory, per dtype.

    python benchmarks/train_step.py                        # semi_resnet18 + semi_vgg16, 16x224x224, fp32 + bf16
    python benchmarks/train_step.py --quick --size 64 --width 0.25   # a CPU smoke run

Runs the library's own pmapped ``train.train_step`` (SGD with dampening, MultiSteps, BatchNorm
synchronised over the devices) on random uint8 clips, ``--batch`` clips per device on every local
device. Each configuration is compiled and warmed up, then ``--steps`` steps are timed (blocking on
the result). Peak memory is the device allocator's ``peak_bytes_in_use`` (GPU; not reported on CPU),
which accumulates over the process: configurations run in the order listed, smallest first.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.jax_utils  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import base  # noqa: E402
from semicnn_jax import models, train  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["semi_resnet18", "semi_vgg16"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8, help="clips per device and step")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 timed steps")
    return parser.parse_args(argv)


def peak_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def time_train_steps(model_name: str, dtype: str, args) -> dict:
    config = base.get_config(model_name)
    config.model.width, config.model.dtype = args.width, dtype
    config.num_frames, config.crop_size = args.frames, args.size
    config.accumulation_steps = 1
    model = train.create_model(config, num_classes=101)
    variables = models.init_variables(model, (1, args.frames, args.size, args.size, 3), config.seed)
    tx = train.create_optimizer(config)
    state = train.replicate(train.initial_state(config, variables, tx))
    step = train.data_parallel(functools.partial(train.train_step, model=model, tx=tx), donate_state=True)
    n = jax.local_device_count()
    rng = np.random.default_rng(0)
    batch = train.shard(
        {
            "video": rng.integers(0, 256, (n * args.batch, args.frames, args.size, args.size, 3), np.uint8),
            "label": rng.integers(0, 101, n * args.batch).astype(np.int32),
            "mask": np.ones(n * args.batch, bool),
        }
    )
    batch = next(flax.jax_utils.prefetch_to_device(iter([batch]), 1))  # on the devices, as in training
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    steps = 3 if args.quick else args.steps
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    params = models.num_params(variables["params"])
    return {
        "model": model_name,
        "dtype": dtype,
        "params": params,
        "compile_s": compile_s,
        "step_ms": 1e3 * seconds,
        "clips_s": n * args.batch / seconds,
        "peak_gib": peak_memory_gib(),
    }


def main(argv=None):
    args = parse_args(argv)
    device = jax.local_devices()[0]
    print(f"devices: {jax.local_device_count()} x {device.device_kind} ({device.platform}); jax {jax.__version__}")
    print(
        f"clips {args.frames}x{args.size}x{args.size}, {args.batch} per device per step, width {args.width}, "
        f"{3 if args.quick else args.steps} timed steps\n"
    )
    print("| model | dtype | params | compile s | ms/step | clips/s | peak memory GiB |")
    print("|---|---|---|---|---|---|---|")
    for model_name in args.models:
        for dtype in args.dtypes:
            r = time_train_steps(model_name, dtype, args)
            peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
            print(
                f"| {r['model']} | {r['dtype']} | {r['params']:,} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | "
                f"{r['clips_s']:.1f} | {peak} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
