"""Per-op time of a model's forward pass or training step on this CPU (jax.profiler trace).

    python benchmarks/profile_model.py                            # semi_resnet18, forward, batch 8
    python benchmarks/profile_model.py --model resnet18_3d --step train --batch 4 --top 30

Runs the jitted forward (eval mode) or gradient of a training forward (train mode, BatchNorm
statistics updated) on 16x112x112 clips, traces ``--runs`` calls with ``jax.profiler`` (XLA's
per-thunk trace events switched on with ``--xla_cpu_enable_xprof_traceme``) and prints, per
compiled op: the busiest thread's time per call (the op's wall share) and the time summed over
threads, the op's kind (convolution, dot, reduce-window, scatter, elementwise loop), its output
shape and the model path from the op's metadata. Totals by kind close the table.

With convolutions in XLA's Eigen kernels (``semicnn_jax.xla_cpu``, the default) the convolution thunks
emit no trace events: the table shows everything else, and a call's wall time minus the sum is the
convolutions. ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` ... shows YNNPACK's instead.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile

if __name__ == "__main__":  # before jax starts: the per-thunk trace events
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.machine import machine_report  # noqa: E402
from semicnn_jax import models  # noqa: E402

KINDS = ("convolution", "dot", "reduce-window", "select-and-scatter", "scatter", "concatenate", "transpose", "pad")


def compiled_step(model_name: str, step: str, batch: int, frames: int, size: int, width: float = 1.0):
    model = models.create(model_name, num_classes=101, width=width)
    clip = jnp.ones((batch, frames, size, size, 3))
    variables = model.init(jax.random.PRNGKey(0), clip[:1], train=False)
    if step == "forward":
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    else:

        def loss(params, v, x):
            logits, updates = model.apply(
                {**v, "params": params}, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
            )
            return jnp.mean(logits**2), updates

        fn = jax.jit(lambda v, x: jax.grad(loss, has_aux=True)(v["params"], v, x))
    return fn, (variables, clip)


def describe_ops(hlo_text: str) -> dict[str, str]:
    """Compiled op name -> 'kind shape model/path' from the optimised HLO text."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = bodies.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    described = {}
    for line in hlo_text.splitlines():
        op = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if not op:
            continue
        name, shape, kind = op.groups()
        called = re.search(r"calls=%?([\w.\-]+)", line)
        body = "\n".join(bodies.get(called.group(1), [])) if called else line
        kind = next((k for k in KINDS if f" {k}(" in body), "elementwise" if kind == "fusion" else kind)
        path = re.search(r'op_name="jit\([^)]*\)/([^"]*)"', body)
        path = path.group(1) if path else ""
        described[name] = f"{kind:12s} {shape.split('{')[0]:24s} {path[:70]}"
    return described


def profile(fn, args, runs: int) -> dict[str, dict[str, float]]:
    """Op name -> {thread: ms per call} from a jax.profiler trace of ``runs`` calls."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        for _ in range(runs):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        (trace,) = [os.path.join(d, f) for d, _, fs in os.walk(logdir) for f in fs if f.endswith(".xplane.pb")]
        data = jax.profiler.ProfileData.from_file(trace)
    per_op: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA's compute threads
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    per_op[event.name][line.name] += event.duration_ns / 1e6 / runs
    return per_op


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="semi_resnet18")
    p.add_argument("--step", choices=("forward", "train"), default="forward")
    p.add_argument("--batch", type=int, default=None, help="default 8 (forward), 4 (train)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (the demo: 0.125)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    batch = args.batch or (8 if args.step == "forward" else 4)
    fn, call_args = compiled_step(args.model, args.step, batch, args.frames, args.size, args.width)
    described = describe_ops(fn.lower(*call_args).compile().as_text())
    per_op = profile(fn, call_args, args.runs)
    rows = sorted(((max(t.values()), sum(t.values()), op) for op, t in per_op.items()), reverse=True)
    wall = sum(r[0] for r in rows)
    print(machine_report())
    print(
        f"\n{args.model} width {args.width}, {args.step}, batch {batch}x{args.frames}x{args.size}x{args.size}x3 "
        f"float32, {args.runs} runs"
    )
    print(f"sum over ops of the busiest thread's time: {wall:.0f} ms per call\n")
    print("| busiest thread ms | all threads ms | share | op | kind, output shape, model path |")
    print("|---|---|---|---|---|")
    for busiest, total, op in rows[: args.top]:
        print(f"| {busiest:.1f} | {total:.1f} | {100 * busiest / wall:.1f} % | {op} | {described.get(op, '?')} |")
    by_kind = collections.Counter()
    for busiest, _, op in rows:
        by_kind[described.get(op, "?").split(" ")[0]] += busiest
    print("\n| kind | ms per call (busiest thread) | share |\n|---|---|---|")
    for kind, ms in by_kind.most_common():
        print(f"| {kind} | {ms:.0f} | {100 * ms / wall:.0f} % |")


if __name__ == "__main__":
    main()
