"""Training step (forward + backward + SGD) of semi_resnet18 and resnet18_3d: JAX against PyTorch on this CPU.

    python benchmarks/train_vs_torch.py                 # batch 4, 16x112x112, float32
    python benchmarks/train_vs_torch.py --quick         # fewer repeats
    python benchmarks/train_vs_torch.py --bf16 --models semi_resnet18 --batch 2 --size 64

The companion of ``forward_throughput.py`` for training. Variants per model, all starting from the
same weights (the model's own initialisation, copied to PyTorch with
``torch_reference.load_flax_variables``) and stepping on the same uint8 clip and labels:

* JAX: the library's ``train.train_step`` as the training loop runs it (pmapped over the one CPU
  device, donated state, normalisation of the uint8 clip inside the step, softmax cross-entropy,
  ``train.create_optimizer``'s SGD with the paper's momentum 0.9 / dampening 0.9 / weight decay 1e-4);
* PyTorch: the ``torch_reference`` network in training mode, the same normalisation, cross-entropy,
  ``torch.optim.SGD`` with the same hyper-parameters; default NCDHW and ``channels_last_3d`` layouts;
* with ``--bf16``: JAX ``dtype=bfloat16`` (float32 parameters) and PyTorch channels_last_3d under
  CPU autocast to bfloat16.

Every variant takes ``--warmup`` steps (JAX: compile), then ``--repeats`` timed steps in interleaved
rounds. ``first loss`` is each variant's loss on its first step, from identical weights (PyTorch
NCDHW's in the last column's reference): equal losses show both compute the same step. ``last loss``
after all steps on the same batch shows the optimisers move alike. ``GFLOP/s`` counts a training step
as 3x the forward pass's operations (``forward_throughput.forward_flops``: the forward, and the input
and weight gradients of every layer), with its share of this machine's measured peak
(``machine.measured_peak``) in brackets.
"""

from __future__ import annotations

import functools
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.jax_utils  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401  (torch.optim loads it, and triton with it: before TensorFlow, see tests/conftest.py)

from benchmarks import torch_reference  # noqa: E402
from benchmarks.forward_throughput import (  # noqa: E402
    Variant,
    comparison_parser,
    forward_flops,
    markdown_table,
    run_comparison,
    timed_rounds,
    timing_columns,
    torch_variants,
)
from benchmarks.machine import torch_autocast  # noqa: E402
from experiments import base  # noqa: E402
from semicnn_jax import inference, models, train  # noqa: E402

TRAINING_FLOPS_PER_FORWARD = 3  # forward + input gradient + weight gradient


def jax_step(variables, clip: np.ndarray, labels: np.ndarray, config, num_classes: int, dtype: str):
    """The library's pmapped training step on one device; ``run()`` steps once and returns the mean loss."""
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    model = train.create_model(config, num_classes=num_classes)
    tx = train.create_optimizer(config)
    state = train.replicate(train.initial_state(config, variables, tx))
    step = train.data_parallel(functools.partial(train.train_step, model=model, tx=tx), donate_state=True)
    batch = train.shard({"video": clip, "label": labels, "mask": np.ones(len(labels), bool)})
    batch = next(flax.jax_utils.prefetch_to_device(iter([batch]), 1))  # on the device, as in training
    holder = {"state": state}

    def run():
        holder["state"], sums = step(holder["state"], batch)
        sums = jax.device_get(train.unreplicate(sums))
        return float(sums["loss"] / sums["count"])

    return run


def torch_step(name: str, variables, clip: np.ndarray, labels: np.ndarray, config, num_classes: int, fmt, dtype: str):
    """The PyTorch reference's training step with the same normalisation, loss and SGD."""
    net = torch_reference.create(name, num_classes=num_classes).train()
    torch_reference.load_flax_variables(net, jax.device_get(variables))
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(
        net.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        dampening=config.dampening,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    x_uint8 = torch.from_numpy(clip).permute(0, 4, 1, 2, 3).contiguous(memory_format=fmt)
    mean = torch.from_numpy(inference.IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.from_numpy(inference.IMAGENET_STD).view(1, 3, 1, 1, 1)
    target = torch.from_numpy(labels.astype(np.int64))
    autocast = torch_autocast(dtype)

    def run():
        opt.zero_grad(set_to_none=True)
        x = (x_uint8.float() / 255.0 - mean) / std
        with autocast:
            logits = net(x.contiguous(memory_format=fmt))
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run


def build_variants(name: str, clip, labels, config, args) -> list[Variant]:
    model = train.create_model(config, num_classes=args.num_classes)
    variables = models.init_variables(model, (1,) + clip.shape[1:], config.seed)
    dtypes = ("float32", "bfloat16") if args.bf16 else ("float32",)
    variants = [
        Variant(
            "jax train_step" + ("" if d == "float32" else ", bfloat16"),
            jax_step(variables, clip, labels, config, args.num_classes, d),
            d,
        )
        for d in dtypes
    ]
    for label, fmt, dtype in torch_variants(args.bf16):
        run = torch_step(name, variables, clip, labels, config, args.num_classes, fmt, dtype)
        variants.append(Variant(label, run, dtype))
    return variants


def benchmark_model(name: str, args) -> list[dict]:
    config = base.get_config(name)
    config.accumulation_steps = 1  # every step applies SGD, as PyTorch's does
    shape = (args.batch, args.frames, args.size, args.size, 3)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, shape, np.uint8)
    labels = rng.integers(0, args.num_classes, args.batch).astype(np.int32)
    variants = build_variants(name, clip, labels, config, args)
    first_loss = {}
    for v in variants:  # warm-up: the first step (JAX: compile) from the shared initial weights
        first_loss[v.label] = v.run()
        for _ in range(args.warmup - 1):
            v.run()
        print(f"  [{name}] warm-up {v.label}: first loss {first_loss[v.label]:.6f}", flush=True)
    timed_rounds(name, variants, args.repeats, keep_last_output=True, idle_s=args.idle)
    flops = TRAINING_FLOPS_PER_FORWARD * forward_flops(name, shape, args.num_classes)
    reference_loss = first_loss["torch NCDHW"]
    rows = []
    for v in variants:
        rows.append(
            dict(
                timing_columns(name, v, variants, flops, args),
                first_loss=first_loss[v.label],
                first_diff=abs(first_loss[v.label] - reference_loss),
                last_loss=v.output,
            )
        )
    return rows


LOSS_COLUMNS = {
    "first loss (diff to torch NCDHW)": lambda r: f"{r['first_loss']:.5f} ({r['first_diff']:.1e})",
    "last loss": lambda r: f"{r['last_loss']:.4g}",
}


def parse_args(argv=None):
    p = comparison_parser(__doc__, "steps", batch=4, warmup="default 5")
    args = p.parse_args(argv)
    # JAX's first steps after compiling run 30-50 % slower (semi_resnet18: 1074, 926, 968, then 719-731 ms)
    args.warmup = 5 if args.warmup is None else args.warmup
    args.repeats = args.repeats or (3 if args.quick else 7)
    if args.warmup < 1 or args.repeats < 1:
        p.error("--warmup and --repeats must be >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    table = functools.partial(markdown_table, unit="ms/step", extra=LOSS_COLUMNS)
    return run_comparison(args, benchmark_model, "uint8, training step", "steps", table)


if __name__ == "__main__":
    main()
