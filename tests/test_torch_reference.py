"""The JAX ResNets against an independent PyTorch reference (benchmarks/torch_reference.py).

Random weights and random, non-trivial BatchNorm running statistics; eval mode on both sides.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_reference
from semicnn_jax import models

WIDTH = 0.125
NUM_CLASSES = 7
# The smallest convenient clip that survives every pool of both models (last maps 2x1x1 / 1x1x1).
CLIP_SHAPE = (2, 16, 32, 32, 3)
MODELS = ("semi_resnet18", "resnet18_3d")


def _randomise(variables, seed: int):
    """Replaces every leaf: kernels ~ N(0, 2/fan_in), BN scale/bias/mean/var random, non-trivial."""
    rng = np.random.default_rng(seed)

    def leaf(path, value):
        name = path[-1].key
        shape = value.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            out = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name == "scale":
            out = rng.uniform(0.5, 1.5, shape)
        elif name == "bias":
            out = rng.normal(0.0, 0.2, shape)
        elif name == "mean":
            out = rng.normal(0.0, 0.3, shape)
        elif name == "var":
            out = rng.uniform(0.3, 2.0, shape)
        else:
            raise AssertionError(f"unexpected leaf {jax.tree_util.keystr(path)}")
        return jnp.asarray(out, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, variables)


@functools.lru_cache(maxsize=None)
def _setup(name: str):
    clip = np.random.default_rng(1).normal(size=CLIP_SHAPE).astype(np.float32)
    model = models.create(name, num_classes=NUM_CLASSES, width=WIDTH, lowering="3d")
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(CLIP_SHAPE), train=False))
    variables = _randomise(
        jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), seed=MODELS.index(name)
    )
    net = torch_reference.create(name, num_classes=NUM_CLASSES, width=WIDTH).eval()
    torch_reference.load_flax_variables(net, variables)
    with torch.inference_mode():
        expected = net(torch_reference.clip_to_torch(clip)).numpy()
    return clip, variables, expected


@pytest.mark.parametrize("lowering", ["2d", "3d"])
@pytest.mark.parametrize("name", MODELS)
def test_jax_matches_torch_reference(name, lowering):
    clip, variables, expected = _setup(name)
    model = models.create(name, num_classes=NUM_CLASSES, width=WIDTH, lowering=lowering)
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, clip))
    assert got.shape == expected.shape == (CLIP_SHAPE[0], NUM_CLASSES)
    scale = np.max(np.abs(expected))
    assert scale > 1e-2  # the comparison means something
    err = np.max(np.abs(got - expected)) / scale
    assert err < 1e-4, f"{name} lowering={lowering}: max |jax - torch| / max |torch| = {err:.2e}"


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_match(name):
    _, variables, _ = _setup(name)
    net = torch_reference.create(name, num_classes=NUM_CLASSES, width=WIDTH)
    jax_count = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    torch_count = sum(p.numel() for p in net.parameters())
    assert jax_count == torch_count


@pytest.mark.parametrize("name,expected", [("resnet18_3d", 33_255_717), ("semi_resnet18", 31_741_605)])
def test_full_width_parameter_count_matches_table2(name, expected):
    net = torch_reference.create(name, num_classes=101, width=1.0)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_channels_last_3d_gives_the_same_logits():
    clip, variables, expected = _setup("semi_resnet18")
    net = torch_reference.create("semi_resnet18", num_classes=NUM_CLASSES, width=WIDTH).eval()
    torch_reference.load_flax_variables(net, variables)
    net = net.to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        got = net(torch_reference.clip_to_torch(clip, torch.channels_last_3d)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.max(np.abs(expected)))


def test_load_rejects_mismatched_variables():
    _, variables, _ = _setup("semi_resnet18")
    wider = torch_reference.create("semi_resnet18", num_classes=NUM_CLASSES, width=0.25)
    with pytest.raises(ValueError, match="shape"):
        torch_reference.load_flax_variables(wider, variables)
    other = torch_reference.create("resnet18_3d", num_classes=NUM_CLASSES, width=WIDTH)
    with pytest.raises((KeyError, ValueError)):
        torch_reference.load_flax_variables(other, variables)
    net = torch_reference.create("semi_resnet18", num_classes=NUM_CLASSES, width=WIDTH)
    partial = {"params": variables["params"]}  # running statistics missing
    with pytest.raises(KeyError, match="running_mean"):
        torch_reference.load_flax_variables(net, partial)
