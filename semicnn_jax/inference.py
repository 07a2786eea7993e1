"""Jitted inference: class probabilities for any model, batch size and dtype."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def make_predict_fn(model: nn.Module, dtype: Any = None) -> Callable[[Any, jax.Array], jax.Array]:
    """Returns a jitted ``(variables, clip) -> float32[N, num_classes]`` of softmax probabilities.

    Runs the model in evaluation mode (BatchNorm running averages, no dropout). ``dtype``
    (e.g. ``jnp.bfloat16``) overrides the model's computation dtype; parameters are used as
    stored. Each new clip shape compiles once.
    """
    if dtype is not None:
        model = model.clone(dtype=jnp.dtype(dtype))

    @jax.jit
    def predict(variables, clip):
        logits = model.apply(variables, clip, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return predict


def make_features_fn(model: nn.Module, dtype: Any = None):
    """Jitted ``(variables, clip) -> (probabilities, stage features)`` for visualisation."""
    if dtype is not None:
        model = model.clone(dtype=jnp.dtype(dtype))

    @jax.jit
    def features(variables, clip):
        logits, feats = model.apply(variables, clip, train=False, return_features=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1), feats

    return features
