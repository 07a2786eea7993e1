"""Checkpoints that can be trusted: a digest of the arrays written with each one and checked on restore,
non-finite weights refused, a damaged newest checkpoint set aside for the newest intact one.

Each checkpoint's orbax ``custom_metadata`` holds ``{"sha256": {part: hex digest}}``, one digest per
top-level part of the saved tree (``params``, ``batch_stats``, ``opt_state``, ...), so a reader that
restores only some parts (``predict``) checks exactly those.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging as std_logging
import os
import shutil
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from semicnn_jax import exits

DIGEST_KEY = "sha256"
TMP_MARKER = ".orbax-checkpoint-tmp"
DAMAGED_DIR = "damaged_checkpoints"
VERIFIED_FINITE = ("params", "batch_stats")  # parts whose values must all be finite

# orbax reads through asyncio tasks: one damaged file fails dozens of them, and each one's exception is
# logged again when the task is garbage-collected ("Task exception was never retrieved"), long after the
# restore that raised it. The project runs no asyncio code of its own, so that logger stays quiet.
std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be used; the message names its directory and says why."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def parts(tree) -> dict[str, Any]:
    """The top-level parts of a saved tree (a dataclass such as ``TrainState``, or a dict)."""
    if dataclasses.is_dataclass(tree):
        return {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    return dict(tree)


def _path_name(path) -> str:
    """A leaf's path by names only, so a part restored as plain dicts (orbax without a target) or as the
    original named tuples and dataclasses digests the same."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def digest(tree) -> dict[str, str]:
    """sha256 of each top-level part: every leaf's path, dtype, shape and bytes, in path order."""
    out = {}
    for name, part in parts(tree).items():
        h = hashlib.sha256()
        leaves = sorted(
            (_path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(part))[0]
        )
        for path, leaf in leaves:
            array = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{path}|{array.dtype}|{array.shape}|".encode())
            h.update(array.tobytes())
        out[name] = h.hexdigest()
    return out


def non_finite(tree) -> list[str]:
    """Paths of the floating-point arrays in ``VERIFIED_FINITE`` parts that hold a NaN or infinity."""
    bad = []
    for name, part in parts(tree).items():
        if name in VERIFIED_FINITE:
            for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(part))[0]:
                array = np.asarray(leaf)
                if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                    bad.append(name + jax.tree_util.keystr(path))
    return bad


@contextlib.contextmanager
def quiet_library_errors():
    """Keeps orbax's and asyncio's own error logs (dozens of tracebacks for one unreadable file) off the
    console while a checkpoint is read or written; the exception that results is reported once."""
    loggers = [std_logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(std_logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def save(manager: ocp.CheckpointManager, step: int, state, metrics: dict | None = None) -> None:
    """Saves ``state`` at ``step`` with its digest and waits until it is on disk.

    The arrays go as host numpy arrays: every process holds the same (replicated) state, and orbax writes
    such arrays once, from the primary process, in a run of several processes."""
    state = jax.device_get(state)
    with quiet_library_errors():
        manager.save(
            step,
            args=ocp.args.StandardSave(state),
            metrics=metrics,
            force=True,
            custom_metadata={DIGEST_KEY: digest(state)},
        )
        manager.wait_until_finished()


def verify(where: str, restored, expected: dict | None) -> None:
    """Raises ``DamagedCheckpoint`` when a restored part's digest differs from the recorded one or its
    weights are not finite. A checkpoint without a recorded digest is accepted with a warning."""
    if expected is None:
        logging.warning("%s has no recorded digest (written by an earlier version); not verified", where)
    else:
        actual = digest(restored)
        differ = [name for name in actual if name in expected and expected[name] != actual[name]]
        if differ:
            raise DamagedCheckpoint(where, f"its arrays differ from the digest written with them ({', '.join(differ)})")
    bad = non_finite(restored)
    if bad:
        raise DamagedCheckpoint(where, f"non-finite values in {len(bad)} arrays, e.g. {bad[0]}")


def recorded_digest(manager: ocp.CheckpointManager, step: int) -> dict | None:
    metadata = manager.metadata(step)
    return (getattr(metadata, "custom_metadata", None) or {}).get(DIGEST_KEY)


def restore_verified(manager: ocp.CheckpointManager, step: int, restore: Callable[[], Any]):
    """``restore()`` of checkpoint ``step``, verified; any failure becomes one ``DamagedCheckpoint``."""
    where = os.path.join(str(manager.directory), str(step))
    with quiet_library_errors():
        try:
            expected = recorded_digest(manager, step)
            restored = restore()
        except Exception as error:  # orbax raises many types for one damaged file
            raise DamagedCheckpoint(where, f"cannot be read ({_first_line(error)})") from None
    verify(where, restored, expected)
    return restored


ITEM = "default"  # the folder of a step that orbax's CheckpointManager writes a single item into


def _empty(node) -> bool:
    return node is None or (isinstance(node, (tuple, list, dict)) and not node)


def key_paths(tree) -> set[str]:
    """The key path of every array and every empty node (optax's ``EmptyState``, ``MaskedNode``: ``None``
    in orbax's metadata, empty tuples in a target), the latter marked: states that differ only in where
    they hold nothing (weight decay on or off without momentum, other frozen layers) differ here too."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_empty)[0]
    return {jax.tree_util.keystr(path) + (" (empty)" if _empty(leaf) else "") for path, leaf in leaves}


def layout_difference(manager: ocp.CheckpointManager, step: int, target) -> tuple[list[str], list[str]] | None:
    """(arrays only in checkpoint ``step``, arrays only in ``target``) by key path, from the checkpoint's
    metadata file; None when that file cannot be read (restoring then tells a damaged checkpoint)."""
    try:  # read apart from the manager, which knows an item's handler only once it has saved or restored one
        with quiet_library_errors():
            metadata = ocp.StandardCheckpointer().metadata(os.path.join(str(manager.directory), str(step), ITEM))
        saved = key_paths(metadata.item_metadata.tree)
    except Exception:  # noqa: BLE001  (any unreadable metadata: left to the restore's own checks)
        return None
    wanted = key_paths(ocp.tree.serialize_tree(target, keep_empty_nodes=True))
    return sorted(saved - wanted), sorted(wanted - saved)


def check_layout(manager: ocp.CheckpointManager, step: int, target) -> None:
    """Raises ``exits.ConfigError`` (nothing moved) when checkpoint ``step`` holds other arrays than
    ``target`` has: a resumed run whose config shapes its state otherwise (momentum or weight decay
    switched on or off, other frozen layers), not a damaged checkpoint."""
    difference = layout_difference(manager, step, target)
    if difference is None or not any(difference):
        return
    saved, wanted = difference

    def some(paths):
        return f"{len(paths)} entries, e.g. {paths[0]}" if paths else "none"

    raise exits.ConfigError(
        f"{os.path.join(str(manager.directory), str(step))} holds other arrays than this config's training "
        f"state (only in the checkpoint: {some(saved)}; only in this config's: {some(wanted)}). The optimizer "
        "state follows momentum, weight_decay, freeze_pretrained and freeze_until: resume with the run's "
        "settings or start another --workdir (the checkpoints are left as they are; if the settings are the "
        "run's, the checkpoint's _METADATA file is damaged: move that step aside)"
    )


def set_aside(workdir: str, damaged: DamagedCheckpoint) -> str:
    """Moves a damaged checkpoint into ``workdir/damaged_checkpoints/`` (kept for inspection, out of the
    way of the next save); returns its new path."""
    target = os.path.join(workdir, DAMAGED_DIR, f"{os.path.basename(damaged.where)}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(damaged.where, target)
    return target


def restore_latest_good(
    open_manager: Callable[[], ocp.CheckpointManager], workdir: str, target
) -> tuple[ocp.CheckpointManager, Any, int | None]:
    """(manager, state, step) of the newest intact checkpoint, each damaged newer one named in one line
    and set aside; ``(manager, target, None)`` when the run has no checkpoint. Raises ``DamagedCheckpoint``
    when checkpoints exist but none is intact (starting over silently would lose the run), and
    ``exits.ConfigError`` when one it would restore holds other arrays than ``target`` (``check_layout``).

    ``open_manager`` opens the checkpoint directory afresh: orbax infers the item layout from the steps
    present, so a manager that saw a damaged step is not used after it is set aside."""
    manager = open_manager()
    target = jax.device_get(target)  # host arrays, as saved (see ``save``)
    steps = sorted(manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:
        check_layout(manager, step, target)  # a config that shapes the state otherwise: refused, nothing moved
        try:
            state = restore_verified(
                manager, step, lambda: manager.restore(step, args=ocp.args.StandardRestore(target))
            )
        except DamagedCheckpoint as error:
            damaged.append(error)
            moved = set_aside(workdir, error) if jax.process_index() == 0 else error.where
            logging.warning(
                "checkpoint %s is damaged (%s); moved to %s, trying the one before", error.where, error.reason, moved
            )
            manager.close()
            manager = open_manager()
            continue
        return manager, state, step
    if damaged:
        manager.close()
        raise DamagedCheckpoint(
            os.path.dirname(damaged[0].where),
            f"none of its {len(steps)} checkpoints is intact; "
            f"the newest: {damaged[0].reason}. Restore a copy or start another --workdir",
        )
    return manager, target, None


def remove_stale_temporaries(directory: str) -> list[str]:
    """Removes ``N.orbax-checkpoint-tmp*`` folders that killed saves left in ``directory``."""
    removed = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if TMP_MARKER in name:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                removed.append(name)
    if removed:
        logging.info("removed %d unfinished checkpoint folders of killed saves: %s", len(removed), ", ".join(removed))
    return removed


def candidates(chosen: int, steps: Iterable[int], fallback: bool) -> list[int]:
    """``chosen`` first, then (with ``fallback``) the other steps, newest first."""
    return [chosen] + (sorted((s for s in steps if s != chosen), reverse=True) if fallback else [])
