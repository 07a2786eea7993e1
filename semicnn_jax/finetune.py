"""Initialising a run from another (fine-tuning) and freezing the first stages of a model.

``init_from`` takes either a converted ImageNet file (``convert.load_variables``: every key must
match) or a training run: its workdir (the latest checkpoint), its ``checkpoints/`` folder, or one
checkpoint ``workdir/checkpoints/<step>``. From a run, every parameter and BatchNorm statistic whose
path and shape match the model is loaded; the others keep their fresh initialisation and are
logged. When the class counts differ the classifier is one of them (Kinetics -> UCF-101 or HMDB-51:
Hara's and MMAction2's recipe); the log line names both counts.

Freezing (SGD updates zeroed by ``optax.multi_transform``, as ``train.create_optimizer`` does; the
BatchNorm running statistics keep updating, like ``freeze_pretrained``):

* ``freeze_pretrained=True``: what ``init_from`` provided (an ImageNet file: ``convert.pretrained_mask``;
  a run: every loaded parameter).
* ``freeze_until=<stage>``: every parameter that the model's ``<stage>`` output depends on (traced from
  the model: ``jax.make_jaxpr`` of ``return_features=True``, nothing computed). The stages are each
  model's feature names: ``spatial``, ``temporal``, ``spatiotemporal`` for semi models;
  ``layer1..layer4`` for 2D/3D ResNets, ``block1..block4`` for 2D/3D DenseNets, ``pool1..pool5``
  for VGG-16 2D and C3D. Every frozen parameter must come from ``init_from``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax
import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from semicnn_jax import convert

CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------------------- stages


def _traced_features(model, variables, clip_shape, stage: str | None):
    """``(stage names in network order, jaxpr of the stage's output from (params, other collections, clip))``."""
    names: list[str] = []
    clip = jax.ShapeDtypeStruct(tuple(clip_shape), jnp.float32)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def features(params, rest, x):
        _, feats = model.apply({"params": params, **rest}, x, train=False, return_features=True)
        names[:] = list(feats)
        return feats.get(stage, x)

    jaxpr = jax.make_jaxpr(features)(params, rest, clip)
    return tuple(names), jaxpr


def abstract_variables(model, clip_shape) -> dict:
    clip = jax.ShapeDtypeStruct(tuple(clip_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clip)


def stage_names(model, clip_shape, variables=None) -> tuple[str, ...]:
    """The model's stages (its ``return_features`` names), in network order."""
    variables = variables if variables is not None else abstract_variables(model, clip_shape)
    return _traced_features(model, variables, clip_shape, None)[0]


def stage_mask(model, variables, clip_shape, stage: str) -> Any:
    """A pytree of bools like ``variables['params']``: True for every parameter that the output of
    stage ``stage`` depends on. ValueError naming the valid stages for an unknown one."""
    names, closed = _traced_features(model, variables, clip_shape, stage)
    if stage not in names:
        raise ValueError(f"freeze_until={stage!r} is not a stage of {type(model).__name__}; valid: {', '.join(names)}")
    jaxpr = closed.jaxpr
    needed = {v for v in jaxpr.outvars if not isinstance(v, jax_core.Literal)}
    for eqn in reversed(jaxpr.eqns):  # a nested call counts as one operation: all its inputs feed all its outputs
        if any(v in needed for v in eqn.outvars):
            needed.update(v for v in eqn.invars if not isinstance(v, jax_core.Literal))
    leaves, treedef = jax.tree.flatten(variables["params"])
    return jax.tree.unflatten(treedef, [v in needed for v in jaxpr.invars[: len(leaves)]])


# ---------------------------------------------------------------------------- runs as initialisations


def run_checkpoint(path: str) -> tuple[str, int | None] | None:
    """``(checkpoints folder, step or None for the latest)`` when ``path`` is a run, its checkpoints
    folder or one of its checkpoints; None otherwise."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        return None
    if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == CHECKPOINTS:
        return os.path.dirname(path), int(os.path.basename(path))
    if os.path.isdir(os.path.join(path, CHECKPOINTS)):
        return os.path.join(path, CHECKPOINTS), None
    if os.path.basename(path) == CHECKPOINTS:
        return path, None
    return None


def _steps(directory: str) -> list[int]:
    return sorted(
        int(name) for name in os.listdir(directory) if name.isdigit() and os.path.isdir(os.path.join(directory, name))
    )


def validate(config, model) -> None:
    """``init_from`` exists, and ``freeze_until`` names a stage of ``model`` (ValueError otherwise)."""
    init_from, until = config.get("init_from", ""), config.get("freeze_until", "")
    if init_from:
        run = run_checkpoint(init_from)
        if run is None and not os.path.isfile(init_from):
            raise ValueError(
                f"config.init_from={init_from!r}: no such file, and not a training run (a workdir with "
                f"{CHECKPOINTS}/, or {CHECKPOINTS}/<step>)"
            )
        if run is not None and (
            not os.path.isdir(run[0]) or not _steps(run[0]) or (run[1] is not None and run[1] not in _steps(run[0]))
        ):
            raise ValueError(
                f"config.init_from={init_from!r}: {run[0]} holds no checkpoint"
                + (f" at step {run[1]}" if run[1] is not None else "")
            )
    if until:
        if not init_from:
            raise ValueError(f"config.freeze_until={until!r} needs config.init_from (frozen layers must be loaded)")
        clip_shape = (1, config.num_frames, config.crop_size, config.crop_size, 3)
        names = stage_names(model, clip_shape)
        if until not in names:
            raise ValueError(
                f"config.freeze_until={until!r} is not a stage of {config.model.name}; valid: {', '.join(names)}"
            )


def restore_run(path: str) -> tuple[dict, str, dict]:
    """``({'params', 'batch_stats'} of the run's checkpoint, where it came from, the run's run.json or {})``."""
    directory, step = run_checkpoint(path)
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers=ocp.PyTreeCheckpointHandler()
    )
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"config.init_from={path!r}: {directory} holds no checkpoint")
        stored = manager.item_metadata(step).tree
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {
            k: jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), stored.get(k, {})
            )
            for k in ("params", "batch_stats")
        }
        restored = manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
            ),
        )
    finally:
        manager.close()
    record_path = os.path.join(os.path.dirname(directory), "run.json")
    record = {}
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
    return {k: restored.get(k, {}) for k in ("params", "batch_stats")}, f"{directory}/{step}", record


def load_matching(stored: dict, variables: dict) -> tuple[dict, Any, list[str]]:
    """``variables`` with every array of ``stored`` whose path and shape match; the mask (like
    ``variables['params']``) of the loaded parameters; ``"path: stored shape -> model shape"`` of the rest."""
    have = traverse_util.flatten_dict(flax.core.unfreeze(stored), sep="/")
    want = traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
    merged, fresh = {}, []
    for key, value in want.items():
        other = have.get(key)
        if other is not None and tuple(np.shape(other)) == tuple(value.shape):
            merged[key] = jnp.asarray(other, value.dtype)
        else:
            merged[key] = value
            fresh.append(f"{key}: {'absent' if other is None else tuple(np.shape(other))} -> {tuple(value.shape)}")
    new = traverse_util.unflatten_dict(merged, sep="/")
    loaded = {k for k in want if k.startswith("params/") and not any(f.startswith(k + ":") for f in fresh)}
    mask = jax.tree_util.tree_map_with_path(
        lambda kp, _: "params/" + "/".join(str(getattr(k, "key", k)) for k in kp) in loaded, variables["params"]
    )
    return new, mask, fresh


def load_run(config, variables: dict, num_classes: int) -> tuple[dict, Any]:
    """``variables`` with every matching array of the run ``config.init_from``; the mask of the loaded
    parameters."""
    stored, where, record = restore_run(config.init_from)
    new, mask, fresh = load_matching(stored, variables)
    count = sum(int(np.prod(np.shape(p))) for p, m in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(mask)) if m)
    total = len(jax.tree.leaves(mask))
    loaded = sum(jax.tree.leaves(mask))
    if not loaded:
        raise ValueError(
            f"config.init_from={config.init_from!r}: no parameter of {where} matches {config.model.name} "
            f"(that run trained {record.get('model', 'another model')!r}), e.g. {fresh[0]}"
        )
    if record.get("model") not in (None, config.model.name):
        logging.warning("init_from %s is a run of %s; this run trains %s", where, record["model"], config.model.name)
    logging.info("init_from %s: loaded %d of %d parameter arrays (%d values)", where, loaded, total, count)
    if fresh:
        theirs = record.get("num_classes")
        if theirs is not None and theirs != num_classes:
            logging.warning(
                "init_from %s: the run has %d classes, this run %d: the classifier is freshly initialised",
                where,
                theirs,
                num_classes,
            )
        logging.info(
            "freshly initialised (path: checkpoint shape -> model shape): %s",
            "; ".join(fresh[:8]) + (f"; ... ({len(fresh)} in all)" if len(fresh) > 8 else ""),
        )
    return new, mask


# ---------------------------------------------------------------------------- the training loop's hook


def initialise(config, variables: dict, model) -> tuple[dict, Any]:
    """``init_from`` loaded into ``variables``, and the mask of the parameters to freeze (None: none)."""
    if not config.get("init_from", ""):
        return variables, None
    if run_checkpoint(config.init_from) is not None:
        variables, provided = load_run(config, variables, model.num_classes)
    else:
        variables = convert.load_variables(config.init_from, variables)
        provided = convert.pretrained_mask(config.model.name, variables["params"])
    frozen = None
    if config.get("freeze_pretrained", False):
        frozen = provided
    until = config.get("freeze_until", "")
    if until:
        clip_shape = (1, config.num_frames, config.crop_size, config.crop_size, 3)
        stage = stage_mask(model, variables, clip_shape, until)
        unprovided = [path for (path, s), p in zip(_paths(stage), jax.tree.leaves(provided)) if s and not p]
        if unprovided:
            raise ValueError(
                f"config.freeze_until={until!r} would freeze {len(unprovided)} parameter arrays that "
                f"config.init_from={config.init_from!r} does not provide, e.g. {', '.join(unprovided[:3])}"
            )
        frozen = stage if frozen is None else jax.tree.map(lambda a, b: a or b, frozen, stage)
        logging.info("freeze_until=%s: %d parameter arrays frozen", until, sum(jax.tree.leaves(stage)))
    return variables, frozen


def _paths(tree) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [("/".join(str(getattr(k, "key", k)) for k in kp), leaf) for kp, leaf in leaves]
