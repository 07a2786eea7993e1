"""Jitted inference: class probabilities for any model, batch size and dtype."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(video: jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] frames -> ImageNet-normalised float32 (training's input)."""
    video = video.astype(jnp.float32) / 255.0 if video.dtype == jnp.uint8 else video.astype(jnp.float32)
    return (video - IMAGENET_MEAN) / IMAGENET_STD


def make_predict_fn(model: nn.Module, dtype: Any = None) -> Callable[[Any, jax.Array], jax.Array]:
    """Returns a jitted ``(variables, clip) -> float32[N, num_classes]`` of softmax probabilities.

    Runs the model in evaluation mode (BatchNorm running averages, no dropout). ``dtype``
    (e.g. ``jnp.bfloat16``) overrides the model's computation dtype; parameters are used as
    stored. Each new clip shape compiles once.
    """
    return _make_eval_fn(model, dtype, return_features=False)


def make_features_fn(model: nn.Module, dtype: Any = None) -> Callable[[Any, jax.Array], tuple[jax.Array, dict]]:
    """Jitted ``(variables, clip) -> (probabilities, stage features)`` for visualisation."""
    return _make_eval_fn(model, dtype, return_features=True)


def _make_eval_fn(model: nn.Module, dtype: Any, return_features: bool) -> Callable:
    if dtype is not None:
        model = model.clone(dtype=jnp.dtype(dtype))

    @jax.jit
    def evaluate(variables, clip):
        output = model.apply(variables, clip, train=False, return_features=return_features)
        logits, features = output if return_features else (output, None)
        probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return (probabilities, features) if return_features else probabilities

    return evaluate
