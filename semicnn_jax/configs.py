"""Every config field checked before any work starts: the fields that exist and the values each may take.

A field that no part of the project reads (a typo: ``learning_rat``) is refused with the nearest valid
name; a value out of its range is refused naming the field. ``model.options`` are checked by the model
itself (``models.create``) and the dataset's files by its source (``data.pipeline.validate``).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable

import ml_collections

from semicnn_jax.data import pipeline
from semicnn_jax.exits import ConfigError


def _int(low: int, allowed: tuple[int, ...] = ()) -> Callable[[Any], str | None]:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or (value < low and value not in allowed):
            extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
            return f"an integer >= {low}{extra}"
        return None

    return check


def _real(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    def check(value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
            return f"a finite number in {left}{low}, {high}{right}"
        return None

    return check


def _one_of(*choices):
    def check(value):
        return None if value in choices else f"one of {', '.join(map(repr, choices))}"

    return check


COUNT = _int(1)
RULES: dict[str, Callable[[Any], str | None]] = {
    "model.width": _real(0, low_open=True),
    "num_frames": COUNT,
    "crop_size": COUNT,
    "per_device_batch_size": COUNT,
    "batch_size": _int(1, allowed=(-1,)),
    "accumulation_steps": COUNT,
    "learning_rate": _real(0, low_open=True),
    "momentum": _real(0, 1, high_open=True),
    "dampening": _real(0, 1),
    "weight_decay": _real(0),
    "plateau_factor": _real(0, 1, low_open=True, high_open=True),
    "plateau_patience": _int(0),
    "plateau_threshold": _real(0),
    "num_epochs": COUNT,
    "seed": _int(0),
    "log_every_steps": COUNT,
    "checkpoint_every_epochs": COUNT,
    "keep_checkpoints": COUNT,
    "max_steps": _int(1, allowed=(-1,)),
    "dataset.split": _one_of(1, 2, 3),
    "dataset.val_fraction": _real(0, 1, low_open=True, high_open=True),
    "dataset.train_size": COUNT,
    "dataset.eval_size": COUNT,
    "dataset.workers": _int(-1),
    "dataset.prefetch": COUNT,
    "dataset.shuffle_buffer": COUNT,
    "dataset.max_unreadable_fraction": _real(0, 1),
}
# Fields without a numeric rule (names, paths, switches; their values are checked where they are used).
OTHER_FIELDS = (
    "model.name",
    "model.dtype",
    "model.options",
    "nesterov",
    "init_from",
    "freeze_pretrained",
    "freeze_until",
    "allow_new_geometry",
)


def known_fields() -> set[str]:
    """Every dotted field name the project reads (any dataset source's fields included)."""
    dataset = {f"dataset.{name}" for name in pipeline.config_fields()}
    return set(RULES) | set(OTHER_FIELDS) | dataset


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and name != "model.options":
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` naming the first unknown field (with the nearest valid name) or the first
    value out of its range."""
    known = known_fields()
    values = _leaves(config)
    for name in values:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else "; see experiments/base.py for the fields"
            raise ConfigError(f"config.{name} is not a field of this project{hint}")
    for name, rule in RULES.items():
        if name in values:
            expected = rule(values[name])
            if expected:
                raise ConfigError(f"config.{name}={values[name]!r} must be {expected}")
