"""semicnn_jax: Semi-CNN video action recognition in JAX/Flax."""

__version__ = "0.1.0"
