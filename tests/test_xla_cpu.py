"""semicnn_jax.xla_cpu: the flag that keeps convolutions out of YNNPACK reaches XLA, and yours wins;
semicnn_jax.compilation_cache: where the programs' persistent compilation cache lives."""

import os

import jax
import jax.numpy as jnp

from semicnn_jax import compilation_cache, xla_cpu


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
