"""Forward throughput (clips/s) of semi_resnet18 and resnet18_3d: JAX against PyTorch on this CPU.

    python benchmarks/forward_throughput.py                 # batch 8, 16x112x112, float32, eval
    python benchmarks/forward_throughput.py --quick         # fewer repeats
    python benchmarks/forward_throughput.py --bf16          # and bfloat16 against PyTorch's bf16 autocast
    python benchmarks/forward_throughput.py --batch 4 --frames 16 --size 112 --models semi_resnet18

Variants per model, all with the same weights (random conv/FC weights, random non-trivial BatchNorm
statistics; PyTorch's copy is made with ``torch_reference.load_flax_variables``):

* JAX, jitted, ``lowering='auto'`` (the 2D-convolution lowering on CPU), and ``lowering='3d'``
  (one XLA 3D convolution per layer, for reference; ``--no-jax-3d`` skips it, it is slow on CPU);
* PyTorch, ``torch.inference_mode``, the default NCDHW layout and ``torch.channels_last_3d``;
* with ``--bf16``: JAX with ``dtype=bfloat16`` (parameters kept in float32) and PyTorch
  channels_last_3d under CPU autocast to bfloat16 (oneDNN's AVX-512 bf16 / AMX kernels).

Every variant is warmed up (JAX: compiled and run), then timed ``--repeats`` times; the rounds are
interleaved across variants so that a noisy, shared machine slows them alike. The table reports
the best (and the median) time per batch. ``GFLOP/s`` is XLA's operation count of the forward pass
(``forward_flops``: plain 3D convolutions, the work every variant does) over the best time, and in
brackets its share of this machine's measured peak for the dtype (``machine.measured_peak``: the best
of a large matrix product and a 3x3 convolution in XLA and in PyTorch). ``speed vs PyTorch
channels_last_3d`` is PyTorch channels_last_3d's best time (in the same dtype) divided by the
variant's best time (> 1: faster than it), and in brackets the median over rounds of the same ratio
taken within each round (robust to load that drifts between rounds). ``max diff`` is the largest
absolute logit difference to PyTorch NCDHW float32 (relative to the largest logit in brackets).

On a machine shared with other jobs, PyTorch's OpenMP threads lose much more than XLA's thread
pool when a core is taken away; ``--cores 0`` pins the whole process (both frameworks) to one core
for a per-core comparison that contention distorts less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pin_cores(argv) -> None:
    """Applies ``--cores`` before jax and torch are imported (their thread pools size on import)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--cores", default=None)
    cores = pre.parse_known_args(argv)[0].cores
    if cores:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})


if __name__ == "__main__":
    _pin_cores(sys.argv[1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import torch_reference  # noqa: E402
from benchmarks.machine import machine_report, peak_report, torch_autocast  # noqa: E402
from semicnn_jax import models  # noqa: E402

MODELS = ("semi_resnet18", "resnet18_3d")
REFERENCE = "torch channels_last_3d"


def random_variables(variables, seed: int):
    """Random weights (std sqrt(2/fan_in)) and random, non-trivial BatchNorm parameters and statistics."""
    rng = np.random.default_rng(seed)

    def leaf(path, value):
        name = path[-1].key
        if name == "kernel":
            out = rng.normal(0.0, np.sqrt(2.0 / np.prod(value.shape[:-1])), value.shape)
        elif name == "scale":
            out = rng.uniform(0.5, 1.5, value.shape)
        elif name == "bias":
            out = rng.normal(0.0, 0.1, value.shape)
        elif name == "mean":
            out = rng.normal(0.0, 0.2, value.shape)
        elif name == "var":
            out = rng.uniform(0.5, 2.0, value.shape)
        else:
            raise ValueError(f"unexpected leaf {jax.tree_util.keystr(path)}")
        return jnp.asarray(out, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, variables)


class Variant:
    """A named forward function; ``run()`` computes one batch and returns numpy logits."""

    def __init__(self, label: str, run, dtype: str = "float32"):
        self.label = label
        self.run = run
        self.dtype = dtype
        self.times: list[float] = []
        self.output: np.ndarray | None = None
        self.warmup_s = 0.0

    def time_once(self) -> None:
        start = time.perf_counter()
        out = self.run()
        self.times.append(time.perf_counter() - start)
        if self.output is None:
            self.output = out


def build_variants(name: str, clip: np.ndarray, variables, args) -> list[Variant]:
    variants = []
    lowerings = ["auto"] + ([] if args.no_jax_3d else ["3d"])
    x_jax = jax.device_put(jnp.asarray(clip))
    jax_variants = [(f"jax jit, lowering={lowering!r}", dict(lowering=lowering), "float32") for lowering in lowerings]
    if args.bf16:
        jax_variants.append(("jax jit, bfloat16", dict(dtype="bfloat16"), "bfloat16"))
    for label, opts, dtype in jax_variants:
        model = models.create(name, num_classes=args.num_classes, **opts)
        forward = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False).astype(jnp.float32))

        def run(forward=forward):
            return np.asarray(forward(variables, x_jax).block_until_ready())

        variants.append(Variant(label, run, dtype))

    for label, fmt, dtype in torch_variants(args.bf16):
        net = torch_reference.create(name, num_classes=args.num_classes).eval()
        torch_reference.load_flax_variables(net, variables)
        net = net.to(memory_format=fmt)
        x_t = torch_reference.clip_to_torch(clip, fmt)

        def run(net=net, x_t=x_t, autocast=torch_autocast(dtype)):
            with torch.inference_mode(), autocast:
                return net(x_t).float().numpy()

        variants.append(Variant(label, run, dtype))
    return variants


def torch_variants(bf16: bool) -> list[tuple[str, torch.memory_format, str]]:
    """(label, memory format, dtype) of the PyTorch variants: NCDHW and channels_last_3d in float32, and
    channels_last_3d under bf16 autocast with ``bf16``."""
    variants = [
        ("torch NCDHW", torch.contiguous_format, "float32"),
        (REFERENCE, torch.channels_last_3d, "float32"),
    ]
    if bf16:
        variants.append((f"{REFERENCE}, autocast bfloat16", torch.channels_last_3d, "bfloat16"))
    return variants


def forward_flops(name: str, clip_shape: tuple[int, ...], num_classes: int) -> float:
    """XLA's count of the forward pass's floating-point operations (one plain 3D convolution per layer,
    the work every variant does; a multiply-add counts 2), from the lowered program: nothing runs."""
    model = models.create(name, num_classes=num_classes, lowering="3d")
    clip = jax.ShapeDtypeStruct(clip_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), clip)
    return float(jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, clip).cost_analysis()["flops"])


def benchmark_model(name: str, args) -> list[dict]:
    shape = (args.batch, args.frames, args.size, args.size, 3)
    clip = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    init_model = models.create(name, num_classes=args.num_classes, lowering="3d")
    abstract = jax.eval_shape(lambda: init_model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    variables = random_variables(zeros, seed=MODELS.index(name) if name in MODELS else 0)
    variants = build_variants(name, clip, variables, args)

    for v in variants:  # warm-up: compile (JAX) and first runs
        start = time.perf_counter()
        for _ in range(args.warmup):
            v.output = v.run()
        v.warmup_s = time.perf_counter() - start
        print(f"  [{name}] warm-up {v.label}: {v.warmup_s:.1f} s for {args.warmup} run(s)", flush=True)
    timed_rounds(name, variants, args.repeats, idle_s=args.idle)

    reference_out = next(v.output for v in variants if v.label == "torch NCDHW")
    scale = float(np.max(np.abs(reference_out)))
    flops = forward_flops(name, shape, args.num_classes)
    rows = []
    for v in variants:
        diff = float(np.max(np.abs(v.output - reference_out)))
        rows.append(
            dict(
                timing_columns(name, v, variants, flops, args),
                max_diff=diff,
                rel_diff=diff / scale if scale else float("nan"),
            )
        )
    return rows


def timed_rounds(
    name: str, variants: list[Variant], repeats: int, keep_last_output: bool = False, idle_s: float = 0.0
) -> None:
    """``repeats`` interleaved rounds, one timed run of every variant each (a shared machine's load
    slows them alike); ``keep_last_output``: each variant's ``output`` is its latest run's. ``idle_s``
    before each run lets the previous variant's worker threads stop spinning: PyTorch's OpenMP and
    XLA's Eigen workers busy-wait after a run, and on 2 cores the next framework's first ops share the
    cores with them (JAX's training step right after PyTorch's: 664-1032 ms; after 0.5 s idle 672-737)."""
    for r in range(repeats):
        for v in variants:
            if keep_last_output:
                v.output = None
            time.sleep(idle_s)
            v.time_once()
        print(
            f"  [{name}] round {r + 1}/{repeats}: "
            + ", ".join(f"{v.label} {1e3 * v.times[-1]:.0f} ms" for v in variants),
            flush=True,
        )


def timing_columns(name: str, v: Variant, variants: list[Variant], flops: float, args) -> dict:
    """A row's timing columns: best and median ms, clips/s, GFLOP/s and share of ``args.peak`` for the
    variant's dtype, speed against PyTorch channels_last_3d in the same dtype (best, per-round median)."""
    ref_times = next(r for r in variants if r.label.startswith(REFERENCE) and r.dtype == v.dtype).times
    best = min(v.times)
    return dict(
        model=name,
        variant=v.label,
        best_ms=1e3 * best,
        median_ms=1e3 * statistics.median(v.times),
        clips_per_s=args.batch / best,
        gflops=flops / best / 1e9,
        peak_share=flops / best / 1e9 / args.peak[v.dtype],
        speedup=min(ref_times) / best,
        round_speedup=statistics.median(r / t for r, t in zip(ref_times, v.times)),
    )


def add_clip_args(p: argparse.ArgumentParser, batch: int) -> None:
    """The clip, model and dtype flags both PyTorch comparisons take."""
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112, help="frame height and width")
    p.add_argument("--num-classes", type=int, default=101)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--bf16", action="store_true", help="add JAX dtype=bfloat16 and PyTorch autocast bf16 variants")


def print_machine_and_peaks(args) -> None:
    """The machine report, and ``args.peak``: the measured peak GFLOP/s per dtype compared."""
    print(machine_report())
    args.peak = {}
    for dtype in ("float32", "bfloat16") if args.bf16 else ("float32",):
        args.peak[dtype], line = peak_report(dtype)
        print(line)


def markdown_table(rows: list[dict], unit: str = "ms/batch", extra: dict | None = None) -> str:
    """The rows' timing columns, then ``extra``'s (header -> row -> cell)."""
    extra = extra or {"max diff to torch fp32 (rel.)": lambda r: f"{r['max_diff']:.1e} ({r['rel_diff']:.0e})"}
    headers = [
        f"model | framework/variant | {unit} (best; median) | clips/s (best) | GFLOP/s (% of peak)",
        "speed vs PyTorch channels_last_3d, same dtype (best; per-round median)",
        *extra,
    ]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * (5 + len(headers) - 1)]
    for r in rows:
        cells = [
            f"{r['model']} | {r['variant']} | {r['best_ms']:.0f}; {r['median_ms']:.0f} | {r['clips_per_s']:.2f} | "
            f"{r['gflops']:.0f} ({100 * r['peak_share']:.0f} %)",
            f"{r['speedup']:.2f}x ({r['round_speedup']:.2f}x)",
            *(cell(r) for cell in extra.values()),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def comparison_parser(doc: str, what: str, batch: int, warmup: str) -> argparse.ArgumentParser:
    """Flags of both PyTorch comparisons: --quick, the clip's, --warmup and --repeats of ``what`` (runs, steps)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"3 timed {what} per variant")
    add_clip_args(p, batch)
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up {what} ({warmup})")
    p.add_argument("--repeats", type=int, default=None, help=f"timed {what} (default 7, --quick 3)")
    p.add_argument("--idle", type=float, default=0.5, help="seconds idle before each timed run (default 0.5)")
    return p


def parse_args(argv=None):
    p = comparison_parser(__doc__, "runs", batch=8, warmup="default 2, --quick 1")
    p.add_argument("--no-jax-3d", action="store_true", help="skip the slow JAX lowering='3d' variant")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--cores",
        default=None,
        help="comma-separated CPU ids to pin the process to, e.g. 0 (set before jax/torch start)",
    )
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.warmup < 1 or args.repeats < 1:
        p.error("--warmup and --repeats must be >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.cores and os.sched_getaffinity(0) != {int(c) for c in args.cores.split(",")}:
        _pin_cores(["--cores", args.cores])  # imported as a module: pin late; match torch's threads
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    return run_comparison(args, benchmark_model, "float32, eval mode", "runs", markdown_table)


def run_comparison(args, benchmark, what: str, unit: str, table) -> list[dict]:
    """Prints the machine and peaks, runs ``benchmark(name, args)`` for every model, prints the ``table``
    of the rows and returns them."""
    print_machine_and_peaks(args)
    print(
        f"clip {args.batch}x{args.frames}x{args.size}x{args.size}x3 {what}, "
        f"{args.warmup} warm-up + {args.repeats} timed {unit} per variant, {args.idle:g} s idle before each "
        "(best and median reported)\n",
        flush=True,
    )
    rows = [row for name in args.models for row in benchmark(name, args)]
    print()
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
