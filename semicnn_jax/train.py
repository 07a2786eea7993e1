"""Training and evaluation: pure per-device step functions, mapped over all local devices.

The recipe (paper 4.1): SGD with PyTorch semantics (momentum, dampening, coupled weight decay),
gradients accumulated with ``optax.MultiSteps`` (``optim.accumulate``) to the effective batch
``per_device_batch_size x devices x accumulation_steps``, BatchNorm synchronised across devices,
and the learning rate cut by ``plateau_factor`` when the validation loss stops improving
(``optax.contrib.reduce_on_plateau`` stepped once per epoch).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import flax
import flax.jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from flax import struct

from semicnn_jax import checkpoints, configs, distributed, exits, finetune, models, optim
from semicnn_jax.data import pipeline
from semicnn_jax.data.source import DatasetInfo
from semicnn_jax.inference import normalize

AXIS = "batch"
PREFETCH = 2  # batches copied to the devices ahead of the step that needs them


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs. ``step`` counts mini-batches; ``epoch`` finished epochs."""

    step: jax.Array
    epoch: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    plateau_state: Any
    rng: jax.Array  # raw uint32 key data (checkpointable)


# ---------------------------------------------------------------------------- set-up


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Refuses a bad config before any work starts (``exits.ConfigError`` naming the field and value)."""
    configs.check(config)  # every field known, every number in its range
    try:
        model = models.create(config.model.name, num_classes=2, **model_options(config))  # name and options
        batch_size = config.get("batch_size", -1)
        if batch_size > 0 and batch_size % jax.device_count():
            raise ValueError(
                f"config.batch_size={batch_size} is not divisible by the {jax.device_count()} "
                f"devices; set a multiple of {jax.device_count()} or per_device_batch_size"
            )
        finetune.validate(config, model)  # init_from (a file or a run) and freeze_until
        pipeline.validate(config)  # last: it may read the dataset's index files
    except exits.ConfigError:
        raise
    except ValueError as e:
        raise exits.ConfigError(str(e)) from e


def model_options(config) -> dict:
    opts = dict(config.model.get("options", {}))
    return dict(opts, width=config.model.width, dtype=config.model.dtype)


def per_device_batch(config) -> int:
    batch_size = config.get("batch_size", -1)
    return batch_size // jax.device_count() if batch_size > 0 else config.per_device_batch_size


def create_model(config, num_classes: int, axis_name: str | None = AXIS):
    return models.create(config.model.name, num_classes=num_classes, axis_name=axis_name, **model_options(config))


def create_optimizer(config, frozen_mask=None) -> optax.GradientTransformation:
    """SGD (torch semantics), optionally with frozen parameters, accumulated over mini-batches."""
    tx = optim.sgd(
        config.learning_rate, config.momentum, config.dampening, config.weight_decay, config.get("nesterov", False)
    )
    if frozen_mask is not None:
        labels = jax.tree.map(lambda frozen: "frozen" if frozen else "trained", frozen_mask)
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return optim.accumulate(tx, config.accumulation_steps)


def create_plateau(config):
    return optim.plateau(config.plateau_factor, config.plateau_patience, config.get("plateau_threshold", 1e-4))


def initial_state(config, variables, tx) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        plateau_state=optim.plateau_init(create_plateau(config)),
        rng=jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1)),
    )


# ---------------------------------------------------------------------------- steps


def classification_metrics(logits, labels, mask) -> dict:
    """Sums over the (masked) examples: loss, top-1 and top-5 hits, count."""
    mask = mask.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    return {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum((topk[:, 0] == labels) * mask),
        "top5": jnp.sum(jnp.any(topk == labels[:, None], axis=-1) * mask),
        "count": jnp.sum(mask),
    }


def train_step(state: TrainState, batch: dict, *, model, tx) -> tuple[TrainState, dict]:
    """One mini-batch on one device; gradients and BatchNorm statistics averaged over ``AXIS``."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
    video = normalize(batch["video"])

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            video,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        # Mean over the valid examples of all devices (mask False: an example that could not be read);
        # scaled by the device count because the gradients are averaged with pmean.
        mask = batch["mask"].astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        valid = jnp.maximum(jax.lax.psum(jnp.sum(mask), AXIS), 1.0)
        loss = jnp.sum(loss * mask) * jax.lax.psum(1.0, AXIS) / valid
        return loss, (logits, updates.get("batch_stats", {}))

    (_, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # The plateau schedule scales the learning rate, i.e. SGD's final update.
    updates = jax.tree.map(lambda u: u * state.plateau_state.scale.astype(u.dtype), updates)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    metrics = jax.lax.psum(classification_metrics(logits, batch["label"], batch["mask"]), AXIS)
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model) -> tuple[dict, jax.Array]:
    """Clip metrics summed over ``AXIS`` and this device's clip probabilities (for video scores)."""
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, normalize(batch["video"]), train=False
    )
    sums = jax.lax.psum(classification_metrics(logits, batch["label"], batch["mask"]), AXIS)
    return sums, jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def data_parallel(step_fn: Callable, donate_state: bool = False) -> Callable:
    """Maps a per-device step over all local devices along axis ``AXIS`` (the one place to swap
    for ``jax.shard_map``)."""
    return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,) if donate_state else ())


def shard(batch: dict) -> dict:
    """[B, ...] host arrays -> [local_devices, B / local_devices, ...]."""
    n = jax.local_device_count()
    return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)


def replicate(tree):
    """A copy of ``tree`` on every local device, placed as the pmapped steps return their state: a step
    called first with host arrays compiles a second time when it gets its own output (5-7 s a start)."""
    devices = jax.local_devices()
    sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), (AXIS,)), jax.sharding.PartitionSpec(AXIS)
    )
    return jax.device_put(
        jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), tree), sharding
    )


def unreplicate(tree):
    return jax.tree.map(lambda x: x[0], tree)


def averages(sums: dict) -> dict:
    sums = jax.device_get(sums)
    count = max(float(sums["count"]), 1.0)
    return {
        "loss": float(sums["loss"]) / count,
        "top1": float(sums["top1"]) / count,
        "top5": float(sums["top5"]) / count,
    }


def video_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1/top-5 of per-video summed clip probabilities ``scores[V, C]``; label -1 = no clip seen."""
    seen = labels >= 0
    ranked = np.argsort(-scores[seen], axis=-1, kind="stable")[:, :5]
    hits = ranked == labels[seen, None]
    count = max(int(seen.sum()), 1)
    return {"video_top1": float(hits[:, 0].sum()) / count, "video_top5": float(hits.any(-1).sum()) / count}


def evaluate(p_eval_step, state, source, global_batch: int) -> dict:
    """Clip-level loss/top-1/top-5 and video-level top-1/top-5 (softmax averaged over each video's clips)."""
    num_videos, num_classes = source.info.num_eval, source.info.num_classes
    scores = np.zeros((num_videos, num_classes), np.float64)
    labels = np.full(num_videos, -1, np.int64)
    total = None
    for batch in source.eval_batches(global_batch):
        sums, probs = p_eval_step(state, shard(batch))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        keep = np.asarray(batch["mask"], bool)
        videos = np.asarray(batch["video_index"])[keep]
        np.add.at(scores, videos, np.asarray(probs).reshape(-1, num_classes)[keep])
        labels[videos] = np.asarray(batch["label"])[keep]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        scores = np.asarray(multihost_utils.process_allgather(scores)).sum(0)
        labels = np.asarray(multihost_utils.process_allgather(labels)).max(0)
    return dict(averages(unreplicate(total)), count=float(unreplicate(total)["count"]), **video_metrics(scores, labels))


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    """Latest ``keep_checkpoints`` checkpoints plus the best by eval top-1."""
    from orbax.checkpoint import checkpoint_managers as policies

    top1 = lambda metrics: metrics["eval_top1"]  # noqa: E731
    preserve = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=config.get("keep_checkpoints", 3)),
            policies.BestN(get_metric_fn=top1, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    # best_fn makes orbax store each checkpoint's metrics, so the best survives a restart.
    options = ocp.CheckpointManagerOptions(preservation_policy=preserve, best_fn=top1, best_mode="max", create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def run_record(config, info: DatasetInfo) -> dict:
    return {
        "model": config.model.name,
        "model_options": model_options(config),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "num_frames": config.num_frames,
        "crop_size": config.crop_size,
        "dataset": config.dataset.name,
    }


MODEL_KEYS = ("model", "model_options", "num_classes")
GEOMETRY_KEYS = ("num_frames", "crop_size", "dataset")


def check_run_record(workdir: str, record: dict, allow_new_geometry: bool = False) -> bool:
    """A workdir belongs to one model and one clip geometry: refuses to train another into it; True when
    ``run.json`` is to be written (a new run, or ``allow_new_geometry`` letting the same model go on with
    other clips): ``write_run_record`` does it once the start is accepted."""
    path = os.path.join(workdir, "run.json")
    previous = None
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    distributed.barrier("run.json read")  # every process has read it before process 0 may rewrite it
    if previous is None:
        return True

    def differ(keys):
        return [k for k in keys if json.dumps(previous.get(k), sort_keys=True) != json.dumps(record[k], sort_keys=True)]

    if differ(MODEL_KEYS):
        held = {k: previous.get(k) for k in MODEL_KEYS[1:]}
        wanted = {k: record[k] for k in MODEL_KEYS[1:]}
        raise exits.ConfigError(
            f"{workdir} holds a run of model {previous.get('model')!r} ({held}); "
            f"this config trains {record['model']!r} ({wanted}). Use another --workdir."
        )
    changed = differ(GEOMETRY_KEYS)
    if changed and not allow_new_geometry:
        raise exits.ConfigError(
            f"{workdir} was trained with {', '.join(f'{k}={previous.get(k)!r}' for k in changed)}; this config has "
            f"{', '.join(f'{k}={record[k]!r}' for k in changed)}. Use another --workdir, or pass "
            "--config.allow_new_geometry=True to go on with the new clips (run.json is rewritten)"
        )
    if changed:
        logging.warning(
            "allow_new_geometry: %s now %s (was %s); run.json is rewritten",
            ", ".join(changed),
            [record[k] for k in changed],
            [previous.get(k) for k in changed],
        )
    return bool(changed)


def write_run_record(workdir: str, record: dict) -> None:
    if jax.process_index() == 0:
        path = os.path.join(workdir, "run.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
        os.replace(path + ".tmp", path)


def prepare_workdir(workdir: str) -> None:
    """Creates ``workdir`` and proves it writable before any work (one clear error, not a traceback later)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise exits.Failure(
            f"--workdir={workdir} cannot be written ({e.strerror or e}); choose a writable directory"
        ) from None


def load_pretrained(config, variables: dict, model) -> tuple[dict, Any]:
    """Loads ``init_from`` (a converted ImageNet file, or a training run: ``finetune``) and the mask of the
    parameters to freeze (``freeze_pretrained``, ``freeze_until``; None: train everything)."""
    return finetune.initialise(config, variables, model)


# ---------------------------------------------------------------------------- the loop


class NonFiniteLossError(RuntimeError):
    pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains ``config``'s model, resuming from ``workdir``'s latest checkpoint if there is one."""
    validate_config(config)
    prepare_workdir(workdir)
    source = pipeline.create(config)
    info = source.info
    record = run_record(config, info)
    new_record = check_run_record(workdir, record, config.get("allow_new_geometry", False))
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

    per_device = per_device_batch(config)
    global_batch = per_device * jax.device_count()
    steps_per_epoch = info.num_train // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{info.num_train} training examples cannot fill one global batch of {global_batch}")
    logging.info(
        "effective batch %d = %d per device x %d devices x %d accumulation steps",
        global_batch * config.accumulation_steps,
        per_device,
        jax.device_count(),
        config.accumulation_steps,
    )

    model = create_model(config, info.num_classes)
    clip_shape = (1, config.num_frames, config.crop_size, config.crop_size, 3)
    variables, frozen = load_pretrained(config, models.init_variables(model, clip_shape, config.seed), model)
    tx = create_optimizer(config, frozen)
    state = initial_state(config, variables, tx)
    plateau_tx = create_plateau(config)

    if jax.process_index() == 0:
        checkpoints.remove_stale_temporaries(os.path.join(workdir, "checkpoints"))
    manager, state, restored_step = checkpoints.restore_latest_good(
        lambda: checkpoint_manager(workdir, config), workdir, state
    )
    if new_record:  # once the start is accepted (a refused one changes nothing)
        write_run_record(workdir, record)
    if jax.process_index() == 0:  # this start's full config, overrides included (once it is accepted)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    if restored_step is not None:
        logging.info("resumed from step %d (epoch %d)", int(state.step), int(state.epoch))
    else:
        parameter_overview.log_parameter_overview(state.params)
    truncate_metrics(workdir, int(state.epoch))  # epochs evaluated after the checkpoint are evaluated again

    p_train_step = data_parallel(functools.partial(train_step, model=model, tx=tx), donate_state=True)
    p_eval_step = data_parallel(functools.partial(eval_step, model=model))
    start_step = int(state.step)
    num_steps = steps_per_epoch * config.num_epochs
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    stop_signal = distributed.StopSignal()  # SIGTERM to any process: every process stops at the same step
    state = replicate(state)

    def save(state, metrics=None):
        host = unreplicate(state)
        checkpoints.save(manager, int(host.step), host, metrics)

    try:
        step = start_step
        for epoch in range(int(unreplicate(state).epoch), config.num_epochs):
            train_sums = None
            batches = source.train_batches(epoch, step - epoch * steps_per_epoch, global_batch)
            for batch in flax.jax_utils.prefetch_to_device(map(shard, batches), PREFETCH):
                state, sums = p_train_step(state, batch)
                step += 1
                train_sums = sums if train_sums is None else jax.tree.map(jnp.add, train_sums, sums)
                report(step)
                stop = stop_signal.requested()
                if step % config.get("log_every_steps", 50) == 0 or stop:
                    train = averages(unreplicate(train_sums))
                    _check_finite(train["loss"], step)
                    writer.write_scalars(step, {"train/loss": train["loss"], "train/top1": train["top1"]})
                if stop:
                    save(state)
                    raise exits.Preempted(step)
                if config.get("max_steps", -1) > 0 and step >= config.max_steps:
                    save(state)
                    return unreplicate(state)
            if train_sums is not None:  # None: resumed after the epoch's last step, before its evaluation
                check_readable("training", float(unreplicate(train_sums)["count"]), epoch, source)
            train = averages(unreplicate(train_sums)) if train_sums is not None else {}
            evaluation = evaluate(p_eval_step, state, source, global_batch)
            check_readable("evaluation", evaluation.pop("count"), epoch, source)
            skipped = len(source.skipped_files())
            warn_unreadable_share(skipped, info, config)
            _check_finite(evaluation["loss"], step)
            plateau_state = optim.plateau_step(plateau_tx, unreplicate(state).plateau_state, evaluation["loss"])
            state = state.replace(epoch=state.epoch + 1, plateau_state=replicate(plateau_state))
            lr = config.learning_rate * float(plateau_state.scale)
            scalars = {f"eval/{k}": v for k, v in evaluation.items()}
            scalars.update({f"train/{k}": v for k, v in train.items() if k != "top5"})
            scalars["learning_rate"] = lr
            writer.write_scalars(step, scalars)
            append_metrics_line(workdir, dict(scalars, epoch=epoch + 1, step=step, skipped_files=skipped))
            logging.info(
                "epoch %d/%d step %d: train loss %.4f top1 %.2f%% | eval loss %.4f clip top1 %.2f%% "
                "top5 %.2f%% | video top1 %.2f%% top5 %.2f%% | lr %.3g | %d unreadable files skipped",
                epoch + 1,
                config.num_epochs,
                step,
                train.get("loss", np.nan),
                100 * train.get("top1", np.nan),
                evaluation["loss"],
                100 * evaluation["top1"],
                100 * evaluation["top5"],
                100 * evaluation["video_top1"],
                100 * evaluation["video_top5"],
                lr,
                skipped,
            )
            if (epoch + 1) % config.get("checkpoint_every_epochs", 1) == 0 or epoch + 1 == config.num_epochs:
                save(state, {"eval_top1": evaluation["top1"], "eval_loss": evaluation["loss"]})
    finally:
        stop_signal.restore()
        writer.flush()
        source.close()  # loader worker processes
    return unreplicate(state)


def check_readable(what: str, count: float, epoch: int, source) -> None:
    """Refuses an epoch's training or evaluation in which no example could be read (nothing learnt or
    measured: no checkpoint of it may be saved, let alone kept as the best)."""
    if count > 0:
        return
    skipped = source.skipped_files()
    example = next(iter(skipped.items()), None)
    detail = f"{len(skipped)} unreadable files, e.g. {example[0]}: {example[1]}" if example else "no example was read"
    raise exits.Failure(
        f"epoch {epoch + 1}: none of the {what} examples could be read ({detail}); nothing saved. "
        "Check dataset.data_dir and the videos"
    )


def warn_unreadable_share(skipped: int, info, config) -> None:
    total = max(info.num_train + info.num_eval, 1)
    limit = config.dataset.get("max_unreadable_fraction", pipeline.COMMON_FIELDS["max_unreadable_fraction"])
    if skipped / total > limit:
        logging.warning(
            "%d of the dataset's %d videos (%.1f%%) could not be read, more than "
            "dataset.max_unreadable_fraction=%g; the results describe the rest",
            skipped,
            total,
            100 * skipped / total,
            limit,
        )


def truncate_metrics(workdir: str, epochs: int) -> None:
    """Drops ``metrics.jsonl`` lines of epochs after ``epochs`` (evaluated by a run killed before it saved
    them; the resumed run evaluates them again), so the file keeps one line per evaluated epoch."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["epoch"]) <= epochs:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a killed run
    if len(kept) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(path + ".tmp", path)
        logging.info(
            "metrics.jsonl: %d lines of epochs after %d dropped (they are evaluated again)",
            len(lines) - len(kept),
            epochs,
        )


def append_metrics_line(workdir: str, record: dict) -> None:
    """One JSON line per evaluation in ``workdir/metrics.jsonl`` (process 0 only)."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def _check_finite(loss: float, step: int) -> None:
    if not np.isfinite(loss):
        raise NonFiniteLossError(
            f"loss became {loss} at step {step}; stopping. The last checkpoint (before it) "
            "is kept; lower learning_rate or check the data."
        )
