"""Convolution lowerings and pooling primitives against independent references."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax import lax

from semicnn_jax import layers

CASES = [
    # kernel, strides, padding
    ((1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
    ((1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
    ((1, 7, 7), (1, 2, 2), ((0, 0), (3, 3), (3, 3))),
    ((1, 3, 3), (2, 1, 1), ((0, 0), (1, 1), (1, 1))),
    ((3, 1, 1), (1, 1, 1), ((1, 1), (0, 0), (0, 0))),
    ((3, 1, 1), (2, 1, 1), ((1, 1), (0, 0), (0, 0))),
    ((3, 1, 1), (1, 2, 2), ((1, 1), (0, 0), (0, 0))),
    ((3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    ((3, 3, 3), (2, 2, 2), ((1, 1), (1, 1), (1, 1))),
    ((7, 7, 7), (1, 2, 2), ((3, 3), (3, 3), (3, 3))),
    ((2, 3, 3), (1, 1, 2), ((0, 1), (2, 0), (1, 1))),
    ((1, 1, 1), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),
    ((1, 1, 1), (2, 2, 2), ((0, 0), (0, 0), (0, 0))),
    ((1, 1, 1), (1, 2, 2), ((0, 0), (0, 0), (0, 0))),
]


# Inputs that reach every lowering: thin (taps stacked on channels), wide (a 2D convolution per
# tap: 3 x 136 channels > layers.STACK_TAPS_MAX_CHANNELS), and tiny frames (im2col; also a window
# larger than the frame).
INPUTS = {"thin": (2, 7, 9, 10, 5), "wide": (1, 6, 8, 7, 136), "tiny": (2, 3, 2, 2, 8)}
assert 3 * INPUTS["wide"][-1] > layers.STACK_TAPS_MAX_CHANNELS >= 7 * INPUTS["thin"][-1]


@pytest.mark.parametrize("input_name", sorted(INPUTS))
@pytest.mark.parametrize("kernel_shape,strides,padding", CASES)
def test_lowerings_equal_plain_3d_convolution(kernel_shape, strides, padding, input_name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(INPUTS[input_name], np.float32)
    kernel = rng.standard_normal(kernel_shape + (x.shape[-1], 6), np.float32)
    hi = lax.Precision.HIGHEST
    plain = lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=hi
    )
    lowered = jax.jit(lambda a, b: [layers.conv3d(a, b, strides, padding, lowering, hi) for lowering in ("2d", "3d")])
    for y in lowered(x, kernel):
        assert y.shape == plain.shape
        np.testing.assert_allclose(y, plain, rtol=1e-5, atol=1e-5 * float(jnp.abs(plain).max()))


# Every path through the '2d' lowering's own VJPs, inputs wide enough to be materialised: 32 channels
# (temporal taps stacked by concatenation), 136 (one 2D convolution per temporal tap); 5 channels (taps
# stacked by a gather); 1x1x1 kernels (one matrix product) with 24 output channels, so that the output
# gradient is materialised too.
GRADIENT_CASES = [(case, 32, 4) for case in CASES if case[0] != (1, 1, 1)] + [(CASES[7], 136, 4)]
GRADIENT_CASES += [(CASES[7], 5, 4), (CASES[10], 5, 4), (CASES[-3], 32, 24), (CASES[-2], 8, 24)]


@pytest.mark.parametrize("case,channels,features", GRADIENT_CASES)
def test_lowered_gradients_equal_plain_3d_convolution_gradients(case, channels, features):
    """The '2d' lowering's 2D convolutions and matrix products have their own VJP: input and kernel
    gradients equal the plain 3D convolution's."""
    kernel_shape, strides, padding = case
    rng = np.random.default_rng(1)  # numpy draws: no random-number program to compile per case
    x = rng.standard_normal((1, 5, 7, 6, channels), np.float32)
    kernel = rng.standard_normal(kernel_shape + (channels, features), np.float32)
    hi = lax.Precision.HIGHEST

    def conv(lowering):
        return functools.partial(layers.conv3d, strides=strides, padding=padding, lowering=lowering, precision=hi)

    cotangent = rng.standard_normal(jax.eval_shape(conv("3d"), x, kernel).shape, np.float32)
    grads = jax.jit(lambda lowering: jax.vjp(conv(lowering), x, kernel)[1](cotangent), static_argnums=0)
    for got, want in zip(grads("2d"), grads("3d"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_conv_matches_torch_conv3d():
    """The Conv module with PyTorch padding equals torch's Conv3d (an independent reference)."""
    x = np.random.default_rng(0).normal(size=(2, 6, 8, 8, 4)).astype(np.float32)
    conv = layers.Conv(3, (3, 3, 3), (1, 2, 2), (1, 1, 1), use_bias=True, lowering="2d")
    variables = conv.init(jax.random.key(1), x)
    ours = np.asarray(conv.apply(variables, x))
    weight = torch.from_numpy(np.asarray(variables["params"]["kernel"]).transpose(4, 3, 0, 1, 2).copy())
    bias = torch.from_numpy(np.array(variables["params"]["bias"]))
    theirs = F.conv3d(torch.from_numpy(x).permute(0, 4, 1, 2, 3), weight, bias, (1, 2, 2), (1, 1, 1))
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 4, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_auto_lowering_is_2d_on_cpu_and_unknown_is_refused():
    assert layers.resolve_lowering("auto") == "2d"
    with pytest.raises(ValueError, match="unknown lowering 'fast'"):
        layers.resolve_lowering("fast")


def test_conv_kernel_init_is_kaiming_fan_out():
    conv = layers.Conv(64, (3, 3, 3))
    kernel = conv.init(jax.random.key(0), jnp.zeros((1, 3, 4, 4, 32)))["params"]["kernel"]
    assert kernel.shape == (3, 3, 3, 32, 64)
    expected_std = np.sqrt(2.0 / (27 * 64))
    assert abs(float(jnp.std(kernel)) / expected_std - 1) < 0.05


@pytest.mark.parametrize(
    "window,strides,padding",
    [
        ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        ((3, 1, 1), (2, 1, 1), (1, 0, 0)),
        ((2, 2, 2), (2, 2, 2), (0, 0, 0)),
        ((2, 2, 2), (2, 2, 2), (0, 1, 1)),
        ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ],
)
def test_pools_match_torch(window, strides, padding):
    x = np.random.default_rng(1).normal(size=(2, 7, 9, 9, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    to_ndhwc = lambda t: t.permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_allclose(
        layers.max_pool(x, window, strides, padding), to_ndhwc(F.max_pool3d(xt, window, strides, padding)), rtol=1e-6
    )
    # The max pool's own gradient (maxima of strided slices) against torch's autograd.
    weights = np.random.default_rng(2).normal(size=layers.max_pool(x, window, strides, padding).shape)
    ours = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window, strides, padding) * weights))(x)
    xg = xt.clone().requires_grad_(True)
    (F.max_pool3d(xg, window, strides, padding) * torch.from_numpy(weights).permute(0, 4, 1, 2, 3)).sum().backward()
    np.testing.assert_allclose(ours, to_ndhwc(xg.grad), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        layers.avg_pool(x, window, strides, padding),
        to_ndhwc(F.avg_pool3d(xt, window, strides, padding, count_include_pad=True)),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("size", [7, 14, 5, 9, 13])
def test_adaptive_avg_pool_matches_torch(size):
    x = np.random.default_rng(2).normal(size=(2, 1, size, size + 2, 4)).astype(np.float32)
    ours = layers.adaptive_avg_pool_2d(x, (7, 7))[:, 0]
    theirs = F.adaptive_avg_pool2d(torch.from_numpy(x[:, 0]).permute(0, 3, 1, 2), (7, 7)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_pool_that_empties_the_map_is_refused():
    with pytest.raises(ValueError, match="clip too small"):
        layers.max_pool(jnp.zeros((1, 1, 4, 4, 2)), (2, 2, 2), (2, 2, 2))


def test_frames_to_channels_is_frame_major():
    clip = jnp.arange(2 * 3 * 2 * 2 * 3, dtype=jnp.float32).reshape(2, 3, 2, 2, 3)
    stacked = layers.frames_to_channels(clip)
    assert stacked.shape == (2, 1, 2, 2, 9)
    for t, c in itertools.product(range(3), range(3)):
        np.testing.assert_array_equal(stacked[:, 0, :, :, 3 * t + c], clip[:, t, :, :, c])


def test_separable_max_pool_value_and_gradient_equal_one_3d_window():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(3), (2, 5, 7, 7, 3))
    reference = lambda x: nn.max_pool(x, (3, 3, 3), (2, 2, 2), ((1, 1),) * 3)
    ours = lambda x: layers.max_pool(x, (3, 3, 3), (2, 2, 2), (1, 1, 1))
    np.testing.assert_array_equal(ours(x), reference(x))
    weights = jax.random.normal(jax.random.key(4), reference(x).shape)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))(x)
    np.testing.assert_allclose(grad(ours), grad(reference), rtol=1e-6, atol=1e-6)
