"""What every model of the zoo shares: options, input checks, layer factories and the head."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semicnn_jax import layers

# Kernel, padding and stride pattern of each convolution kind (stride s applies where the kernel is > 1).
KINDS = {
    "spatial": ((1, 3, 3), (0, 1, 1), lambda s: (1, s, s)),
    "temporal": ((3, 1, 1), (1, 0, 0), lambda s: (s, 1, 1)),
    "spatiotemporal": ((3, 3, 3), (1, 1, 1), lambda s: (s, s, s)),
}


@dataclasses.dataclass(frozen=True)
class Pool:
    """A pooling layer: window, strides and PyTorch-style padding, each (T, H, W)."""

    window: tuple[int, int, int]
    strides: tuple[int, int, int]
    padding: tuple[int, int, int] = (0, 0, 0)

    def max(self, x):
        return layers.max_pool(x, self.window, self.strides, self.padding)

    def avg(self, x):
        return layers.avg_pool(x, self.window, self.strides, self.padding)


SPATIAL_POOL = Pool((1, 3, 3), (1, 2, 2), (0, 1, 1))
TEMPORAL_POOL = Pool((3, 1, 1), (2, 1, 1), (1, 0, 0))
FRAME_POOL = Pool((1, 2, 2), (1, 2, 2))  # halves each frame (VGG stages, DenseNet transitions)
CUBE_POOL = Pool((2, 2, 2), (2, 2, 2))  # halves time and space


def check_clip(clip: jax.Array) -> None:
    """Refuses anything but a float clip [N, T, H, W, 3]."""
    if clip.ndim != 5 or clip.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape [N, T, H, W, 3], got {tuple(clip.shape)}")


class VideoClassifier(nn.Module):
    """Options common to every model.

    Attributes:
      num_classes: size of the classifier.
      width: channel multiplier (1.0 is the paper's model; small values give tiny test models).
      dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32; logits are float32.
      axis_name: the mapped axis BatchNorm averages its batch statistics over (None: no sync).
      lowering: convolution lowering, see :mod:`semicnn_jax.layers`.
    """

    num_classes: int = 101
    width: float = 1.0
    dtype: Any = jnp.float32
    axis_name: str | None = None
    lowering: str = "auto"

    def channels(self, n: int) -> int:
        """``n`` channels scaled by ``width`` (at least 1)."""
        return max(1, int(round(n * self.width)))

    def conv_factory(self, kernel_init=layers.kaiming_fan_out, use_bias: bool = False):
        return functools.partial(
            layers.Conv, dtype=self.dtype, lowering=self.lowering, kernel_init=kernel_init, use_bias=use_bias
        )

    def norm_factory(self, train: bool):
        return functools.partial(
            layers.BatchNorm, use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype
        )

    def classify(self, x: jax.Array, kernel_init=layers.torch_default_kernel, name: str = "fc") -> jax.Array:
        """Final linear layer; float32 logits."""
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=kernel_init, name=name)(x)
        return x.astype(jnp.float32)


def output(logits, features, return_features: bool):
    return (logits, features) if return_features else logits
