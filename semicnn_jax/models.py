"""The model zoo: every model of the paper by name.

    from semicnn_jax import models
    models.names()                                       # every registered name
    model = models.create("semi_resnet18", num_classes=101, width=0.25)
    variables = model.init(rng, clip, train=False)       # clip: float[N, T, H, W, 3]
    logits = model.apply(variables, clip, train=False)   # float32[N, num_classes]
    logits, feats = model.apply(variables, clip, train=False, return_features=True)

Options on every model: ``num_classes``, ``width``, ``dtype``, ``axis_name``, ``lowering``;
VGG-row models add ``dropout_rate``; semi-ResNets ``head``; semi-DenseNets ``reading`` and ``head``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from semicnn_jax import densenet, layers, resnet, vgg

COMMON_OPTIONS = ("num_classes", "width", "dtype", "axis_name", "lowering")


def _entry(cls, extra_options: tuple[str, ...] = (), **layout) -> tuple[Callable[..., nn.Module], tuple[str, ...]]:
    return functools.partial(cls, **layout), COMMON_OPTIONS + extra_options


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "vgg16_2d": _entry(vgg.VGG16, ("dropout_rate",)),
    "c3d": _entry(vgg.C3D, ("dropout_rate",)),
    "semi_vgg16": _entry(vgg.SemiVGG16, ("dropout_rate",)),
}
for _depth in sorted(resnet.DEPTHS):
    _REGISTRY[f"resnet{_depth}_2d"] = _entry(resnet.ResNet, **resnet.resnet_2d(_depth))
    _REGISTRY[f"resnet{_depth}_3d"] = _entry(resnet.ResNet, **resnet.resnet_3d(_depth))
    _REGISTRY[f"semi_resnet{_depth}"] = _entry(resnet.ResNet, ("head",), **resnet.semi_resnet(_depth))
for _depth, _blocks in densenet.BLOCKS.items():
    _REGISTRY[f"densenet{_depth}_2d"] = _entry(densenet.DenseNet, block_config=_blocks, kind="spatial")
    _REGISTRY[f"densenet{_depth}_3d"] = _entry(densenet.DenseNet, block_config=_blocks, kind="spatiotemporal")
    _REGISTRY[f"semi_densenet{_depth}"] = _entry(
        densenet.SemiDenseNet, ("reading", "head"), st_config=densenet.SEMI_ST_BLOCKS[_depth]
    )

_CHOICES = {"head": ("single", "multilevel"), "reading": ("a", "b"), "lowering": layers.LOWERINGS}


def names() -> tuple[str, ...]:
    """Every registered model name."""
    return tuple(_REGISTRY)


def options(name: str) -> tuple[str, ...]:
    """The options ``create`` accepts for ``name``."""
    return _lookup(name)[1]


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _check_option(name: str, key: str, value: Any) -> Any:
    if key in _CHOICES and value is not None and value not in _CHOICES[key]:
        raise ValueError(f"{name}: {key}={value!r} is not one of {_CHOICES[key]}")
    if key == "width" and not float(value) > 0:
        raise ValueError(f"{name}: width must be > 0, got {value!r}")
    if key == "num_classes" and not (isinstance(value, int) and value > 0):
        raise ValueError(f"{name}: num_classes must be a positive int, got {value!r}")
    if key == "dropout_rate" and not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: dropout_rate must be in [0, 1), got {value!r}")
    if key == "dtype":
        try:
            return jnp.dtype(value)
        except TypeError as e:
            raise ValueError(f"{name}: dtype={value!r} is not a dtype") from e
    return value


def create(name: str, num_classes: int = 101, **opts: Any) -> nn.Module:
    """Builds model ``name``; unknown names or options raise ValueError listing the valid ones."""
    constructor, valid = _lookup(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    opts = {k: _check_option(name, k, v) for k, v in dict(opts, num_classes=num_classes).items()}
    return constructor(**opts)


def abstract_variables(model: nn.Module, clip_shape: tuple[int, ...] = (1, 16, 224, 224, 3)) -> Any:
    """The model's variables as shapes only (``jax.eval_shape``: nothing is allocated)."""
    clip = jax.ShapeDtypeStruct(clip_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clip)


def init_variables(model: nn.Module, clip_shape: tuple[int, ...], seed: int = 0) -> dict:
    """Freshly initialised ``{'params', 'batch_stats'}`` for clips of ``clip_shape`` (one jitted init).

    Compiled without LLVM's optimisations: the init runs once, and its random-number code (JAX's
    partitionable threefry) takes 5-6 s to optimise against 1.2 s without (semi_resnet18, resnet18_3d,
    semi_vgg16; CPU), while running in 0.03 s either way. The values are the same up to 1 ulp of the
    normal sampler (contracted multiply-adds)."""
    init = jax.jit(functools.partial(model.init, train=False), compiler_options={"xla_backend_optimization_level": 0})
    variables = init(jax.random.key(seed), jnp.zeros(clip_shape, jnp.float32))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def num_params(tree: Any) -> int:
    """Number of values in a (possibly abstract) tree of arrays."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
