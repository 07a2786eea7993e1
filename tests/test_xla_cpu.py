"""semicnn_jax.xla_cpu: the flag that keeps convolutions out of YNNPACK reaches XLA, and yours wins;
semicnn_jax.host_memory: freed host buffers reused (no page faults per call), unless you chose an allocator;
semicnn_jax.compilation_cache: where the programs' persistent compilation cache lives."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from semicnn_jax import compilation_cache, host_memory, xla_cpu


def test_configure_adds_the_flag_once_and_leaves_a_users_choice():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_cpu.configure(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 --{xla_cpu.FLAG}={xla_cpu.VALUE}"
    assert not xla_cpu.configure(env)  # already there: unchanged
    assert env["XLA_FLAGS"].count(xla_cpu.FLAG) == 1
    mine = {"XLA_FLAGS": f"--{xla_cpu.FLAG}=LIBRARY_FUSION_TYPE_DOT"}
    assert not xla_cpu.configure(mine) and mine["XLA_FLAGS"] == f"--{xla_cpu.FLAG}=LIBRARY_FUSION_TYPE_DOT"
    empty = {}
    assert xla_cpu.configure(empty) and empty["XLA_FLAGS"] == f"--{xla_cpu.FLAG}={xla_cpu.VALUE}"


def test_convolutions_compile_to_xla_kernels_not_ynnpack():
    """The package was imported before the back end started (conftest), so the flag is in effect: a
    convolution YNNPACK would take by default (a ResNet layer's shape) is not a YNN fusion."""

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    args = jnp.zeros((8, 28, 28, 64)), jnp.zeros((3, 3, 64, 64))
    hlo = jax.jit(conv).lower(*args).compile().as_text()
    assert " convolution(" in hlo
    assert "__ynn_fusion" not in hlo
    # and the same compile with the flag's effect undone does use YNNPACK (the check above can fail)
    ynn = jax.jit(conv, compiler_options={xla_cpu.FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"})
    assert "__ynn_fusion" in ynn.lower(*args).compile().as_text()


def test_host_memory_settings_apply_unless_the_user_chose_an_allocator():
    calls = []

    def mallopt(parameter, value):
        calls.append((parameter, value))
        return 1

    assert host_memory.configure({"PATH": "/bin"}, mallopt) and calls == list(host_memory.SETTINGS)
    for chosen in ({"LD_PRELOAD": "libjemalloc.so.2"}, {"MALLOC_ARENA_MAX": "4"}, {host_memory.OFF: "default"}):
        calls.clear()
        assert not host_memory.configure(chosen, mallopt) and calls == []
    assert not host_memory.configure({}, lambda parameter, value: 0)  # refused by the C library: False


# A 64 MiB result per call, released before the next (as a training step's donated state is), 48 calls:
# how many of the last 36 touched the result's worth of fresh pages (the kernel's page-fault count).
FAULTING_CALLS = """
import resource, semicnn_jax, jax, jax.numpy as jnp
f, x, faults = jax.jit(lambda x: x * 2.0), jnp.ones(1 << 24), []
for _ in range(48):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready().delete()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(n >= (1 << 24) * 4 // 4096 for n in faults[12:]))
"""


def test_freed_buffers_are_reused_instead_of_faulted_in_anew():
    """glibc's default maps every large buffer afresh; with ``host_memory`` the heap settles within a few
    calls (3-10 here, now and then a few more later) and then reuses its blocks."""

    def faulting_calls(**env):
        environ = {k: v for k, v in os.environ.items() if host_memory.users_choice({k: v}) is None}
        out = subprocess.run(
            [sys.executable, "-c", FAULTING_CALLS], env=dict(environ, **env), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert faulting_calls(**{host_memory.OFF: "default"}) == 36  # every call
    assert faulting_calls() <= 12


def test_compilation_cache_follows_jax_variable_then_xdg_and_is_off_where_it_cannot_be(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(compilation_cache.logging, "warning", lambda msg, *args: warnings.append(msg % args))
    previous = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
    try:
        mine = str(tmp_path / "mine")
        assert compilation_cache.configure({"JAX_COMPILATION_CACHE_DIR": mine}) == mine
        assert jax.config.jax_compilation_cache_dir == previous[0]  # JAX's own variable: JAX read it
        assert compilation_cache.configure({"JAX_COMPILATION_CACHE_DIR": ""}) is None  # turned off
        home = tmp_path / "cache home"
        expected = str(home / "semicnn_jax" / "xla")
        assert compilation_cache.configure({"XDG_CACHE_HOME": str(home)}) == expected
        assert os.path.isdir(expected) and jax.config.jax_compilation_cache_dir == expected
        assert jax.config.jax_compilation_cache_max_size == compilation_cache.MAX_BYTES
        (tmp_path / "a file").write_text("")
        assert compilation_cache.configure({"XDG_CACHE_HOME": str(tmp_path / "a file")}) is None
        assert len(warnings) == 1 and str(tmp_path / "a file" / "semicnn_jax" / "xla") in warnings[0]
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_compilation_cache_max_size", previous[1])
