"""semicnn_jax: Semi-CNN video action recognition in JAX/Flax."""

from semicnn_jax import xla_cpu

xla_cpu.configure()  # before JAX starts its CPU back end: convolutions in XLA's own kernels (see xla_cpu)

__version__ = "0.1.0"
