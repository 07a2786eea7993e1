"""Per-layer cost of each lowering of a model's convolutions: what a per-layer choice could save.

    python benchmarks/lowering_choice.py                           # resnet18_3d and semi_resnet18
    python benchmarks/lowering_choice.py --models resnet18_3d --rounds 5

Records every ``layers.conv3d`` call of the model (input and kernel shapes, strides, padding) with
``jax.eval_shape``, then times each distinct convolution alone, at the model's batch, in every form
``layers`` can give it: the default ``'2d'`` rules, the temporal taps stacked on channels, one 2D
convolution per tap summed, im2col + one matrix product, XLA's 3D convolution. Forward (batch 8) and
forward + input and kernel gradients (batch 4, as in a training step; the kernel gradient alone
for the first layer, whose input is the clip), best of ``--rounds``. The
table ends with the model's total over its convolutions under the default rules and under the best
form of each layer: the room a per-layer choice by measurement has on this machine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import best_seconds, machine_report  # noqa: E402
from semicnn_jax import layers, models  # noqa: E402


@contextlib.contextmanager
def _rules(**values):
    old = {k: getattr(layers, k) for k in values}
    for k, v in values.items():
        setattr(layers, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(layers, k, v)


# Each form: name -> (lowering, the layers thresholds set while tracing it); `applies` says where it is one.
FORMS = {
    "default": ("2d", {}),
    "stacked taps": ("2d", {"STACK_TAPS_MAX_CHANNELS": 1 << 30, "SMALL_OUTPUT": 0}),
    "per-tap sum": ("2d", {"STACK_TAPS_MAX_CHANNELS": 0, "SMALL_OUTPUT": 0}),
    "im2col": ("2d", {"SMALL_OUTPUT": 1 << 30}),
    "3d": ("3d", {}),
}


IM2COL_MAX_BYTES = 1 << 29  # larger im2col matrices are not candidates (memory, and minutes to time)


def applies(form: str, x_shape, k_shape, strides, batch: int) -> bool:
    kt, kh, kw = k_shape[:3]
    if form == "im2col":
        positions = batch * np.prod([-(-n // s) for n, s in zip(x_shape[:3], strides)])
        return positions * np.prod(k_shape[:4]) * 4 <= IM2COL_MAX_BYTES
    if kt == kh == kw == 1:
        return form in ("default", "3d")
    if form in ("stacked taps", "per-tap sum"):
        return kt > 1 and (kh, kw) != (1, 1)
    return True


def conv_calls(model_name: str, frames: int, size: int, width: float) -> collections.Counter:
    """``(x shape without batch, kernel shape, strides, padding) -> count`` of the model's convolutions."""
    model = models.create(model_name, num_classes=101, width=width)
    calls = collections.Counter()
    original = layers.conv3d

    def recording(x, kernel, strides=(1, 1, 1), padding=((0, 0),) * 3, lowering="auto", precision=None):
        calls[(tuple(x.shape[1:]), tuple(kernel.shape), layers._triple(strides), layers._padding(padding))] += 1
        return original(x, kernel, strides, padding, lowering, precision)

    layers.conv3d = recording
    try:
        clip = jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.float32)
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clip)
    finally:
        layers.conv3d = original
    return calls


def timed(form: str, x_shape, k_shape, strides, padding, batch: int, train: bool, rounds: int) -> float:
    lowering, rules = FORMS[form]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch,) + x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32) * 0.05)
    conv = lambda x, k: layers.conv3d(x, k, strides, padding, lowering)  # noqa: E731

    def forward_and_gradients(x, k):
        if x_shape[-1] == 3:  # the model's input: only the kernel gradient is computed
            y, vjp = jax.vjp(lambda k: conv(x, k), k)
        else:
            y, vjp = jax.vjp(conv, x, k)
        return y, vjp(y)  # the output returned: not eliminated as dead code

    fn = jax.jit(forward_and_gradients if train else conv)
    with _rules(**rules):
        compiled = fn.lower(x, k).compile()
    return best_seconds(lambda: jax.block_until_ready(compiled(x, k)), rounds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18_3d,semi_resnet18")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-3d", action="store_true", help="skip XLA's 3D convolution (minutes for big kernels)")
    args = parser.parse_args(argv)
    print(machine_report())
    forms = [f for f in FORMS if not (args.no_3d and f == "3d")]
    for name in args.models.split(","):
        calls = conv_calls(name, args.frames, args.size, args.width)
        for step, batch, train in (("forward", 8, False), ("forward + gradients", 4, True)):
            print(f"\n{name}, {step}, batch {batch}x{args.frames}x{args.size}x{args.size}, ms (best of {args.rounds})")
            print("| input | kernel | strides | count | " + " | ".join(forms) + " | best |")
            print("|---" * (len(forms) + 5) + "|")
            total_default = total_best = 0.0
            for (x_shape, k_shape, strides, padding), count in calls.items():
                ms = {
                    f: 1000 * timed(f, x_shape, k_shape, strides, padding, batch, train, args.rounds)
                    for f in forms
                    if applies(f, x_shape, k_shape, strides, batch) and not (f == "3d" and train and k_shape[0] > 3)
                }
                best = min(ms, key=ms.get)
                total_default += count * ms["default"]
                total_best += count * ms[best]
                cells = [f"{ms[f]:.1f}" if f in ms else "-" for f in forms]
                shape = "x".join(map(str, x_shape))
                print(
                    f"| {shape} | {'x'.join(map(str, k_shape))} | {strides} | {count} | "
                    + " | ".join(cells)
                    + f" | {best} |"
                )
            print(
                f"total over the convolutions: default {total_default:.0f} ms, best per layer {total_best:.0f} ms "
                f"({100 * (1 - total_best / total_default):.1f} % less)"
            )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
