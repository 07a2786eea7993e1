"""semicnn_jax: Semi-CNN video action recognition in JAX/Flax."""

from semicnn_jax import host_memory, xla_cpu

# Both before JAX starts its CPU back end: convolutions in XLA's own kernels (see xla_cpu), freed host
# buffers reused instead of unmapped (see host_memory).
xla_cpu.configure()
host_memory.configure()

__version__ = "0.1.0"
