"""Convolution, pooling and normalisation primitives for clips laid out NDHWC.

Every convolution of the project goes through :func:`conv3d`, which computes
exactly ``lax.conv_general_dilated`` with NDHWC inputs and DHWIO kernels, but may
lower it to a form that the backend runs faster:

* ``'3d'``: one 3D convolution (best on GPU, where cuDNN handles 3D well);
* ``'2d'``: 2D convolutions and matrix products only (best on CPU, where XLA's 3D
  convolution is several times slower than the same work as 2D convolutions, in YNNPACK's kernels
  and in Eigen's, which ``semicnn_jax.xla_cpu`` selects; ``benchmarks/README.md``):
  - 1x1x1: a matrix product;
  - small outputs (at most 32 positions per clip), or a window larger than the frame: im2col
    and one matrix product (XLA would otherwise swap such a 2D convolution's operands and run
    it as a naive loop);
  - kxkxk on thin inputs (kt * Cin <= 384: the 7x7x7 stem, 3x3x3 up to 128 channels): the temporal
    taps stacked on channels, one 2D convolution;
  - 1xkxk (spatial): time folded into the batch, one 2D convolution;
  - kx1x1 (temporal): (H, W) flattened, one 2D convolution over (T, H*W);
  - other kxkxk: one 2D convolution per temporal tap over shifted time slices, summed.
* ``'auto'``: ``'3d'`` on GPU/TPU, ``'2d'`` on CPU.

All lowerings are tested against the plain 3D convolution.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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


def _plain_conv2d(x: Array, kernel: Array, strides, padding, precision) -> Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_CONV2D_DIMS, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x: Array, kernel: Array, strides, padding, precision) -> Array:
    """A 2D convolution whose differentiated forward pass reads its input through ``_materialized``."""
    return _plain_conv2d(x, kernel, strides, padding, precision)


def _conv2d_fwd(x, kernel, strides, padding, precision):
    x = _materialized(x)
    return _plain_conv2d(x, kernel, strides, padding, precision), (x, kernel)


def _conv2d_bwd(strides, padding, precision, residuals, grad):
    conv = functools.partial(_plain_conv2d, strides=strides, padding=padding, precision=precision)
    return jax.vjp(conv, *residuals)[1](grad)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _plain_pointwise(x: Array, kernel: Array, precision) -> Array:
    return jnp.einsum("nthwc,co->nthwo", x, kernel, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x: Array, kernel: Array, precision) -> Array:
    """A 1x1x1 convolution as one matrix product whose gradients read their output gradient through
    ``_materialized``: XLA had fused the BatchNorm backward into the transposing copy the kernel
    gradient needs (10.7 ms on one thread for semi_resnet18's 128-channel downsample at batch 4); the
    gradient of its training forward 1-2 % faster (``benchmarks/README.md``)."""
    return _plain_pointwise(x, kernel, precision)


def _pointwise_fwd(x, kernel, precision):
    return _plain_pointwise(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, grad):
    pointwise = functools.partial(_plain_pointwise, precision=precision)
    return jax.vjp(pointwise, *residuals)[1](_materialized(grad))


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _materialized(x: Array) -> Array:
    """``x`` (the same values) as the output of a channel-split concatenation, an op XLA's CPU fusion
    does not merge into its users.

    A weight gradient needs its convolution's input transposed (channels major); XLA's CPU compiler
    fuses the input's producer (BatchNorm, ReLU, the residual addition) into that transposing copy and
    recomputes it in transposed order, 20-40 ms for a 64x28x28x64 input against 1.1 ms for a plain
    transpose of the stored input. Through the concatenation both the forward convolution and the
    transposes read one stored copy: semi_resnet18's gradient 10 % faster, its training step 5 %
    (``benchmarks/README.md``).
    The ``reduce_precision`` to the dtype's own precision (no change) keeps XLA from folding the two
    halves back into ``x``. Thinner inputs (``FUSED_CONCAT_BYTES``) would be fused anyway: left as they are.
    """
    c = x.shape[-1]
    if c * x.dtype.itemsize < FUSED_CONCAT_BYTES:
        return x
    info = jnp.finfo(x.dtype)
    return jnp.concatenate([x[..., : c // 2], lax.reduce_precision(x[..., c // 2 :], info.nexp, info.nmant)], -1)


def _out_len(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


SMALL_OUTPUT = 32  # output positions per clip at or below which im2col + one matmul wins
# kt * Cin at or below which temporal taps are stacked on channels (one 2D convolution on a kt-times
# wider copy) instead of one 2D convolution per tap, summed: the stacked form's gradients are 11-18 %
# faster for 3x3x3 at 64-128 channels, and resnet18_3d's training step 5 % (benchmarks/README.md).
STACK_TAPS_MAX_CHANNELS = 384
# Bytes per position under which XLA's CPU fusion merges a concatenation along channels into its users
# (a branchy loop per element) instead of running it as a copy of whole rows.
FUSED_CONCAT_BYTES = 64


def _time_slices(x: Array, kt: int, st: int, t_out: int) -> list[Array]:
    return [lax.slice_in_dim(x, dt, dt + st * (t_out - 1) + 1, stride=st, axis=1) for dt in range(kt)]


def _stacked_taps(x: Array, kt: int, st: int, t_out: int) -> Array:
    """``[N, t_out, H, W, kt * C]``: output frame ``i``'s ``kt`` input frames side by side on channels (tap-major).

    Under ``FUSED_CONCAT_BYTES`` of channels (the 7x7x7 stem's 3) as one gather of the frames and a transpose: XLA's
    concatenation of such thin slices runs a branchy loop on one thread (resnet18_3d's stem, batch 8:
    53 -> 26 ms; its forward + kernel gradient 593 -> 525 ms). Wider, the concatenation copies whole rows.
    """
    n, _, h, w, c = x.shape
    if c * x.dtype.itemsize < FUSED_CONCAT_BYTES:
        frames = st * np.arange(t_out)[:, None] + np.arange(kt)[None, :]
        return jnp.moveaxis(x[:, frames], 2, 4).reshape(n, t_out, h, w, kt * c)
    return jnp.concatenate(_time_slices(x, kt, st, t_out), axis=-1)


def _im2col(x: Array, kernel: Array, strides: Triple, padding: Padding, out_shape, precision) -> Array:
    kt, kh, kw, c, cout = kernel.shape
    (st, sh, sw), (to, ho, wo) = strides, out_shape
    x = jnp.pad(x, ((0, 0),) + padding + ((0, 0),))
    cols = [
        x[:, a : a + st * (to - 1) + 1 : st, b : b + sh * (ho - 1) + 1 : sh, d : d + sw * (wo - 1) + 1 : sw]
        for a in range(kt)
        for b in range(kh)
        for d in range(kw)
    ]
    cols = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    return jnp.einsum("nthwc,co->nthwo", cols, kernel.reshape(kt * kh * kw * c, cout), precision=precision)


def conv3d(
    x: Array,
    kernel: Array,
    strides: Triple = (1, 1, 1),
    padding: Padding = ((0, 0),) * 3,
    lowering: str = "auto",
    precision=None,
) -> Array:
    """``lax.conv_general_dilated`` of an NDHWC clip with a DHWIO kernel, lowered per ``lowering``."""
    lowering = resolve_lowering(lowering)
    strides = _triple(strides)
    padding = _padding(padding)
    if lowering == "3d":
        return lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=_CONV3D_DIMS, precision=precision
        )

    n, t, h, w, c = x.shape
    kt, kh, kw, _, cout = kernel.shape
    st, sh, sw = strides
    pt, ph, pw = padding
    out_shape = tuple(_out_len(*a) for a in zip((t, h, w), (kt, kh, kw), strides, padding))
    t_out = out_shape[0]

    if kt == kh == kw == 1 and padding == ((0, 0),) * 3:
        return _pointwise(x[:, ::st, ::sh, ::sw], kernel[0, 0, 0], precision)
    if math.prod(out_shape) <= SMALL_OUTPUT or kh * kw > h * w:
        return _im2col(x, kernel, strides, padding, out_shape, precision)
    if kh == kw == 1 and ph == pw == (0, 0):
        # Temporal: subsample space, then one 2D convolution over (T, H*W).
        x = x[:, :, ::sh, ::sw]
        h, w = x.shape[2], x.shape[3]
        y = _conv2d(x.reshape(n, t, h * w, c), kernel.reshape(kt, 1, c, cout), (st, 1), (pt, (0, 0)), precision)
        return y.reshape(n, t_out, h, w, cout)

    x = jnp.pad(x, ((0, 0), pt, (0, 0), (0, 0), (0, 0))) if pt != (0, 0) else x
    if kt > 1 and kt * c <= STACK_TAPS_MAX_CHANNELS:
        # Thin input: the temporal taps side by side on channels, one 2D convolution.
        stacked = _stacked_taps(x, kt, st, t_out).reshape(n * t_out, h, w, kt * c)
        kernel2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, cout)
        y = _conv2d(stacked, kernel2d, (sh, sw), (ph, pw), precision)
    else:
        # A 2D convolution per temporal tap, time folded into the batch, summed.
        y = sum(
            _conv2d(xs.reshape(n * t_out, h, w, c), kernel[dt], (sh, sw), (ph, pw), precision)
            for dt, xs in enumerate(_time_slices(x, kt, st, t_out))
        )
    return y.reshape(n, t_out, y.shape[1], y.shape[2], cout)


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
        kernel = self.param("kernel", self.kernel_init, ksize + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv3d(x, kernel, _triple(self.strides), _padding(self.padding), self.lowering)
        if bias is not None:
            y = y + bias
        return y


def max_pool(x: Array, window: Triple, strides: Triple, padding: Any = 0) -> Array:
    """3D max pooling with PyTorch's explicit (implicit -inf) padding.

    Separable: one window per axis (exact for a max, and faster than one 3D window on CPU).
    The gradient is that of a maximum over strided slices: XLA's own max-pool gradient
    (select-and-scatter) costs 2.5x more on CPU (``benchmarks/README.md``). It routes each
    output's gradient to the window's maximum; where several inputs tie for it, they share it.
    """
    window, strides, padding = _triple(window), _triple(strides), _padding(padding)
    return _nonempty(x, _max_pool(x, window, strides, padding), window)


def _pooled_axes(window: Triple, strides: Triple, padding: Padding):
    for axis, (k, s, p) in enumerate(zip(window, strides, padding), start=1):
        if (k, s, p) != (1, 1, (0, 0)):
            yield axis, k, s, p


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: Array, window: Triple, strides: Triple, padding: Padding) -> Array:
    for axis, k, s, p in _pooled_axes(window, strides, padding):
        dims, steps, pads = [1] * 5, [1] * 5, [(0, 0)] * 5
        dims[axis], steps[axis], pads[axis] = k, s, p
        x = lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pads)
    return x


def _max_pool_by_slices(x: Array, window: Triple, strides: Triple, padding: Padding) -> Array:
    """The same max pool as elementwise maxima of strided slices (differentiated as selects)."""
    for axis, k, s, p in _pooled_axes(window, strides, padding):
        pads = [(0, 0)] * x.ndim
        pads[axis] = p
        x = jnp.pad(x, pads, constant_values=-jnp.inf) if p != (0, 0) else x
        n = (x.shape[axis] - k) // s + 1
        taps = [lax.slice_in_dim(x, d, d + s * (n - 1) + 1, stride=s, axis=axis) for d in range(k)]
        x = functools.reduce(jnp.maximum, taps)
    return x


def _max_pool_fwd(x, window, strides, padding):
    return _max_pool(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, grad):
    return jax.vjp(lambda x: _max_pool_by_slices(x, window, strides, padding), x)[1](grad)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool(x: Array, window: Triple, strides: Triple, padding: Any = 0) -> Array:
    """3D average pooling, zero padding counted in the mean (PyTorch's count_include_pad=True)."""
    y = nn.avg_pool(x, _triple(window), _triple(strides), _padding(padding), count_include_pad=True)
    return _nonempty(x, y, window)


def _nonempty(x: Array, y: Array, window) -> Array:
    if 0 in y.shape[1:4]:
        raise ValueError(
            f"clip too small for this model: a {tuple(_triple(window))} pool turns a feature "
            f"map of shape {tuple(x.shape)} into {tuple(y.shape)}; use more frames or larger frames"
        )
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
