"""The command-line programs' persistent XLA compilation cache.

A rerun, a resumed run or another ``predict`` of the same model loads its compiled steps from disk
instead of compiling them again (the demo's start: 25 -> 18.5 s on 2 cores; full-size models save more).
JAX keys every entry by the computation, the compiler flags, the JAX and jaxlib versions and the
devices, so a stale entry is never used; it keeps only compilations that took over a second.

``main`` and ``predict`` call ``configure()`` before they compile anything: JAX's own
``JAX_COMPILATION_CACHE_DIR`` wins when it is set (an empty value turns the cache off), else the cache
lives in ``$XDG_CACHE_HOME/semicnn_jax/xla`` (``~/.cache/semicnn_jax/xla``). A folder that cannot be
created turns the cache off with a warning; nothing else changes. That folder is kept under 4 GiB
(least recently used entries removed). In a run of many processes JAX writes entries from process 0
only: other hosts get cache hits where the folder is shared (set ``JAX_COMPILATION_CACHE_DIR`` to a
shared path).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
from absl import logging

ENV = "JAX_COMPILATION_CACHE_DIR"
MAX_BYTES = 4 << 30  # the default folder's size limit


def default_directory(environ: Mapping[str, str] = os.environ) -> str:
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "semicnn_jax", "xla")


def configure(environ: Mapping[str, str] = os.environ) -> str | None:
    """Points JAX's persistent compilation cache at its folder (see the module doc) and returns it;
    None when the cache is off."""
    if ENV in environ:  # JAX read it when it started
        return environ[ENV] or None
    directory = default_directory(environ)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        logging.warning("XLA compilation cache off: cannot create %s (%s)", directory, e.strerror or e)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if jax.config.jax_compilation_cache_max_size < 0:  # JAX's default: unbounded
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # least recently used entries go first
    logging.info("XLA compilation cache: %s", directory)
    return directory
