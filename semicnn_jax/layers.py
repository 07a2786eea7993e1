"""Convolution, pooling and normalisation primitives for clips laid out NDHWC.

Every convolution of the project goes through :func:`conv3d`, which computes
exactly ``lax.conv_general_dilated`` with NDHWC inputs and DHWIO kernels, but may
lower it to a form that the backend runs faster:

* ``'3d'``: one 3D convolution (best on GPU, where cuDNN handles 3D well);
* ``'2d'``: 2D convolutions only (best on CPU, where XLA's 3D convolution is 5-8x
  slower than the same work as 2D convolutions):
  - 1xkxk (spatial): time folded into the batch, one 2D convolution;
  - kx1x1 (temporal): (H, W) flattened, one 2D convolution over (T, H*W);
  - 1x1x1: a matrix product;
  - kxkxk: one 2D convolution per temporal tap over shifted time slices, summed.
* ``'auto'``: ``'3d'`` on GPU/TPU, ``'2d'`` on CPU.

All lowerings are tested against the plain 3D convolution.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Triple = tuple[int, int, int]
Padding = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

LOWERINGS = ("auto", "3d", "2d")

# torchvision initialisations.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default nn.Linear / nn.Conv init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _triple(value: int | Sequence[int]) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value}")
    return value  # type: ignore[return-value]


def _padding(padding: int | Sequence[int] | Sequence[Sequence[int]]) -> Padding:
    if isinstance(padding, int):
        return ((padding, padding),) * 3  # type: ignore[return-value]
    pads = tuple(padding)
    if len(pads) != 3:
        raise ValueError(f"padding needs 3 entries (T, H, W), got {padding}")
    return tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in pads)  # type: ignore[return-value]


def resolve_lowering(lowering: str) -> str:
    """Maps ``'auto'`` to the fastest lowering for the default backend."""
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown lowering {lowering!r}; valid: {LOWERINGS}")
    if lowering == "auto":
        return "2d" if jax.default_backend() == "cpu" else "3d"
    return lowering


_CONV2D_DIMS = ("NHWC", "HWIO", "NHWC")
_CONV3D_DIMS = ("NDHWC", "DHWIO", "NDHWC")


def _conv2d(x: Array, kernel: Array, strides, padding, precision) -> Array:
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=_CONV2D_DIMS, precision=precision)


def _out_len(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def conv3d(x: Array, kernel: Array, strides: Triple = (1, 1, 1), padding: Padding = ((0, 0),) * 3,
           lowering: str = "auto", precision=None) -> Array:
    """``lax.conv_general_dilated`` of an NDHWC clip with a DHWIO kernel, lowered per ``lowering``."""
    lowering = resolve_lowering(lowering)
    strides = _triple(strides)
    padding = _padding(padding)
    if lowering == "3d":
        return lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=_CONV3D_DIMS, precision=precision)

    n, t, h, w, c = x.shape
    kt, kh, kw, _, cout = kernel.shape
    st, sh, sw = strides
    pt, ph, pw = padding
    t_out = _out_len(t, kt, st, pt)

    if kh == kw == 1 and ph == pw == (0, 0):
        # Temporal (kx1x1) or pointwise (1x1x1): subsample space first, then work on (T, H*W).
        x = x[:, :, ::sh, ::sw]
        h, w = x.shape[2], x.shape[3]
        if kt == 1 and pt == (0, 0):
            y = jnp.einsum("nthwc,co->nthwo", x[:, ::st], kernel[0, 0, 0], precision=precision)
            return y
        y = _conv2d(x.reshape(n, t, h * w, c), kernel.reshape(kt, 1, c, cout),
                    (st, 1), (pt, (0, 0)), precision)
        return y.reshape(n, t_out, h, w, cout)

    # Spatial or spatio-temporal: a 2D convolution per temporal tap, time folded into the batch.
    x = jnp.pad(x, ((0, 0), pt, (0, 0), (0, 0), (0, 0))) if pt != (0, 0) else x
    out = None
    for dt in range(kt):
        xs = lax.slice_in_dim(x, dt, dt + st * (t_out - 1) + 1, stride=st, axis=1)
        y = _conv2d(xs.reshape(n * t_out, h, w, c), kernel[dt], (sh, sw), (ph, pw), precision)
        out = y if out is None else out + y
    assert out is not None
    return out.reshape(n, t_out, out.shape[1], out.shape[2], cout)


class Conv(nn.Module):
    """A kt x kh x kw convolution over NDHWC clips (DHWIO kernel), PyTorch-style explicit padding."""

    features: int
    kernel_size: Triple
    strides: Triple = (1, 1, 1)
    padding: Any = 0
    use_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = kaiming_fan_out
    bias_init: Callable = nn.initializers.zeros
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ksize = _triple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, ksize + (x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv3d(x, kernel, _triple(self.strides), _padding(self.padding), self.lowering)
        if bias is not None:
            y = y + bias
        return y


def max_pool(x: Array, window: Triple, strides: Triple, padding: Any = 0) -> Array:
    """3D max pooling with PyTorch's explicit (implicit -inf) padding."""
    return _nonempty(x, nn.max_pool(x, _triple(window), _triple(strides), _padding(padding)), window)


def avg_pool(x: Array, window: Triple, strides: Triple, padding: Any = 0) -> Array:
    """3D average pooling, zero padding counted in the mean (PyTorch's count_include_pad=True)."""
    y = nn.avg_pool(x, _triple(window), _triple(strides), _padding(padding), count_include_pad=True)
    return _nonempty(x, y, window)


def _nonempty(x: Array, y: Array, window) -> Array:
    if 0 in y.shape[1:4]:
        raise ValueError(f"clip too small for this model: a {tuple(_triple(window))} pool turns a feature "
                         f"map of shape {tuple(x.shape)} into {tuple(y.shape)}; use more frames or larger frames")
    return y


def global_avg_pool(x: Array) -> Array:
    """Mean over T, H and W: [N, T, H, W, C] -> [N, C]."""
    return jnp.mean(x, axis=(1, 2, 3))


def _adaptive_matrix(size: int, out: int, dtype) -> Array:
    """Averaging matrix [out, size] with PyTorch's adaptive-pooling bins."""
    rows = []
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size)])
    return jnp.asarray(rows, dtype)


def adaptive_avg_pool_2d(x: Array, output_size: tuple[int, int]) -> Array:
    """PyTorch ``AdaptiveAvgPool2d`` on the H, W axes of an NDHWC tensor."""
    ph = _adaptive_matrix(x.shape[2], output_size[0], x.dtype)
    pw = _adaptive_matrix(x.shape[3], output_size[1], x.dtype)
    return jnp.einsum("nthwc,ih,jw->ntijc", x, ph, pw)


BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
"""BatchNorm with PyTorch's defaults (torch momentum 0.1 == Flax momentum 0.9, eps 1e-5)."""


def frames_to_channels(clip: Array) -> Array:
    """[N, T, H, W, 3] -> [N, 1, H, W, 3T], frame-major (the 2D baselines' 48-channel input)."""
    n, t, h, w, c = clip.shape
    return jnp.transpose(clip, (0, 2, 3, 1, 4)).reshape(n, 1, h, w, t * c)
