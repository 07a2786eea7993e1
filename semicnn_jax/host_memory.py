"""glibc's allocator set to keep freed memory for reuse: XLA's CPU buffers without page faults.

XLA's CPU runtime allocates each execution's buffers anew (a semi_resnet18 training step at batch 4:
one 635 MB temporary buffer). glibc maps an allocation over 32 MiB, and any that a thread's arena
(64 MiB heaps) cannot hold, with its own ``mmap`` and unmaps it when freed, so every step touched fresh
pages: 163,000 page faults and 220-400 ms of kernel time per step on 2 cores. With one arena, no
``mmap`` and no trimming, freed blocks are reused once the heap has settled (a few calls): that step
685 -> 612-666 ms (median of 20, two runs), the demo 3 m 31 s -> 2 m 46-51 s (``benchmarks/README.md``).
The price: the heap keeps its peak, plus fragmentation (that step's process: 3.8 GB resident instead
of a 2.7 GB peak; the demo's peak 1.44 GB, with glibc's defaults 1.51).

``configure()`` (run when ``semicnn_jax`` is imported, before JAX starts its back end) applies it with
``mallopt`` unless you chose an allocator: ``LD_PRELOAD`` (tcmalloc, jemalloc), ``GLIBC_TUNABLES`` or any
``MALLOC_*`` variable set, or ``SEMICNN_JAX_MALLOC`` set (to ``default``, say). Other C libraries: nothing
is done. It applies to every process that imports the package, the loader's workers included (their
buffers are small), and on GPU hosts too, where it changes little.
"""

from __future__ import annotations

import ctypes
import os
from typing import Callable, Mapping

OFF = "SEMICNN_JAX_MALLOC"  # =default: glibc's own behaviour
# mallopt parameters (glibc malloc.h) and the values set
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def users_choice(environ: Mapping[str, str]) -> str | None:
    """The variable by which the user chose the allocator's behaviour, or None."""
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", OFF):
        if environ.get(name):
            return name
    return next((name for name in environ if name.startswith("MALLOC_")), None)


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has a mallopt that ignores these parameters)
        return libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None


def configure(environ: Mapping[str, str] = os.environ, mallopt: Callable[[int, int], int] | None = None) -> bool:
    """Sets ``SETTINGS``; False when the user chose (``users_choice``) or the C library is not glibc.

    Call before JAX starts its back end: threads that already have an arena keep it."""
    if users_choice(environ) is not None:
        return False
    mallopt = mallopt or _glibc_mallopt()
    if mallopt is None:
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
