"""The machine a benchmark ran on, and its measured peak arithmetic rate.

``machine_report()``: CPU model and vector flags, usable cores, framework versions, XLA flags and load
average, printed above every table. ``measured_peak(dtype)``: the best rate (GFLOP/s) this machine
reaches on one large matrix product or convolution, in XLA or in PyTorch (oneDNN), so that a model's
rate can be read as a share of what the machine can do.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def _cpuinfo_field(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_flags() -> str:
    flags = set((_cpuinfo_field("flags") or "").split())
    return " ".join(f for f in FLAGS_SHOWN if f in flags) or "?"


def machine_report() -> str:
    lines = [
        f"CPU: {cpu_model()} ({cpu_flags()})",
        f"cores: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}",
        f"python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}, "
        f"{len(jax.devices())} device(s)), torch {torch.__version__}, "
        f"torch.get_num_threads()={torch.get_num_threads()}, "
        f"torch oneDNN(mkldnn)={torch.backends.mkldnn.is_available()}",
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    ]
    try:
        lines.append(f"load average: {os.getloadavg()}")
    except OSError:
        pass
    return "\n".join(lines)


def best_seconds(run, repeats: int = 5) -> float:
    """Best wall time of ``repeats`` calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_autocast(dtype: str):
    """PyTorch's CPU autocast to bfloat16 for ``dtype == "bfloat16"`` (oneDNN's bf16 kernels), else a no-op."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")


# The probes: a square matrix product and a 3x3 convolution on a ResNet layer's shape (NHWC), each
# large enough to keep every core busy. (name, flops, jax fn, torch fn) built per dtype.
MATMUL = 2048
CONV = (32, 28, 28, 128, 128)  # batch, height, width, in, out channels; 3x3, stride 1, padding 1


def _probes(dtype: str):
    jdt = jnp.dtype(dtype)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(MATMUL, MATMUL)).astype(np.float32)
    n, h, w, ci, co = CONV
    x = rng.normal(size=(n, h, w, ci)).astype(np.float32)
    k = rng.normal(size=(3, 3, ci, co)).astype(np.float32)
    ja, jx, jk = (jnp.asarray(t, jdt) for t in (a, x, k))
    jmatmul = jax.jit(lambda p, q: p @ q)
    jconv = jax.jit(
        lambda p, q: jax.lax.conv_general_dilated(p, q, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    ta = torch.from_numpy(a)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(ci, co, 3, padding=1, bias=False).eval()
    autocast = torch_autocast(dtype)

    def torch_run(fn):
        def run():
            with torch.inference_mode(), autocast:
                fn()

        return run

    matmul_flops, conv_flops = 2 * MATMUL**3, 2 * n * h * w * 9 * ci * co
    return [
        (f"XLA matmul {MATMUL}^3", matmul_flops, lambda: jmatmul(ja, ja).block_until_ready()),
        (f"XLA conv 3x3 {n}x{h}x{w}x{ci}->{co}", conv_flops, lambda: jconv(jx, jk).block_until_ready()),
        (f"torch matmul {MATMUL}^3", matmul_flops, torch_run(lambda: ta @ ta)),
        (f"torch conv 3x3 {n}x{h}x{w}x{ci}->{co} channels_last", conv_flops, torch_run(lambda: conv(tx))),
    ]


def measured_peak(dtype: str = "float32", repeats: int = 5) -> tuple[float, str, list[tuple[str, float]]]:
    """(best GFLOP/s, the probe that reached it, every probe's GFLOP/s) for ``dtype`` on this machine.
    bfloat16 probes run XLA in bf16 and PyTorch under CPU autocast (oneDNN's AMX/AVX-512 bf16 kernels)."""
    rates = [(name, flops / best_seconds(run, repeats) / 1e9) for name, flops, run in _probes(dtype)]
    best = max(rates, key=lambda r: r[1])
    return best[1], best[0], rates


def peak_report(dtype: str = "float32") -> tuple[float, str]:
    """Measures the peak for ``dtype`` and returns (GFLOP/s, one line describing every probe)."""
    peak, _, rates = measured_peak(dtype)
    return peak, f"peak {dtype}: {peak:.0f} GFLOP/s (" + "; ".join(f"{n} {r:.0f}" for n, r in rates) + ")"


if __name__ == "__main__":
    print(machine_report())
    for dtype in ("float32", "bfloat16"):
        print(peak_report(dtype)[1])
