"""XLA's CPU back end, set for convolutions: Eigen's kernels instead of YNNPACK's.

JAX 0.10's CPU compiler hands every convolution to YNNPACK (``ynn_fusion``). On the 2-core AVX-512
machines of ``benchmarks/README.md`` YNNPACK's convolutions are 2x slower than XLA's own (Eigen) in the
forward pass and 5x slower for weight gradients (a 3x3 layer of 64 channels at 64x28x28: 20 vs 10.6 ms
forward, 92 vs 19 ms weight gradient), so the training step of semi_resnet18 takes 785 ms instead of
1233 and resnet18_3d 1107 instead of 2140 (batch 4, 16x112x112). Matrix products, elementwise work
and reductions stay with YNNPACK.

``configure()`` adds ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to ``XLA_FLAGS``
unless the variable already sets that flag (yours wins). XLA reads the variable once, when JAX starts
its CPU back end (the first computation or ``jax.devices()``): importing ``semicnn_jax`` runs it, so a
program that imports the package before computing anything gets it; later, it warns and changes
nothing. GPUs ignore the flag.
"""

from __future__ import annotations

import os
import warnings
from typing import MutableMapping

FLAG = "xla_cpu_experimental_ynn_fusion_type"
VALUE = "-individual_convolution"  # remove convolutions from YNNPACK's default fusions, keep the rest


def _cpu_backend_started() -> bool:
    import jax
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started()) and jax.default_backend() == "cpu"


def configure(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds the flag to ``environ["XLA_FLAGS"]``; False if ``XLA_FLAGS`` already names the flag (left as
    it is) or if JAX's CPU back end has already started (too late: warns)."""
    flags = environ.get("XLA_FLAGS", "")
    if f"--{FLAG}" in flags:
        return False
    if environ is os.environ and _cpu_backend_started():
        warnings.warn(
            f"semicnn_jax was imported after JAX started its back end: --{FLAG}={VALUE} not set, "
            "convolutions on CPU run up to 2x slower; import semicnn_jax first or set it in XLA_FLAGS",
            stacklevel=3,
        )
        return False
    environ["XLA_FLAGS"] = f"{flags} --{FLAG}={VALUE}".strip()
    return True
