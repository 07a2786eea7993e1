"""Optimisers matching PyTorch: ``torch.optim.SGD`` and ``ReduceLROnPlateau``.

``sgd`` is an optax ``GradientTransformation`` with exactly the update rule of
``torch.optim.SGD`` (coupled weight decay, dampened momentum whose buffer is
set to the raw gradient on the first step, optional Nesterov). Its state holds
arrays only, so it can be jitted, pmapped, wrapped in ``optax.MultiSteps`` and
checkpointed.

``plateau`` returns ``optax.contrib.reduce_on_plateau`` configured to behave
like ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode='min',
threshold_mode='rel')``. The training loop keeps its state apart from the
optimiser state, steps it once per epoch with the validation loss, and
multiplies SGD's final update by its scale inside the jitted step (SGD's
update is linear in the learning rate, so this is training at
``base_lr * scale`` without recompiling)::

    lr_tx = plateau(factor=0.1, patience=10)
    lr_state = plateau_init(lr_tx)
    for epoch in range(num_epochs):
        ...  # updates = updates * lr_state.scale
        lr_state = plateau_step(lr_tx, lr_state, val_loss)

Torch's ``min_lr`` corresponds to ``min_scale = min_lr / base_lr``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "SGDMomentumState",
    "sgd_momentum",
    "sgd",
    "accumulate",
    "plateau",
    "plateau_init",
    "plateau_step",
]


class SGDMomentumState(NamedTuple):
    """State of ``sgd_momentum``: step count (first-step flag) and buffer."""

    count: jax.Array
    trace: optax.Params


def sgd_momentum(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> optax.GradientTransformation:
    """Torch-style momentum: ``buf <- g`` on step 1, then ``m*buf + (1-d)*g``.

    With ``nesterov`` the output is ``g + m*buf``, otherwise ``buf``.
    """

    def init_fn(params):
        return SGDMomentumState(
            count=jnp.zeros([], jnp.int32),
            trace=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0

        def new_buf(g, b):
            g = g.astype(b.dtype)
            return jnp.where(first, g, momentum * b + (1.0 - dampening) * g)

        trace = jax.tree.map(new_buf, updates, state.trace)
        if nesterov:
            out = jax.tree.map(lambda g, b: (g + momentum * b).astype(g.dtype), updates, trace)
        else:
            out = jax.tree.map(lambda g, b: b.astype(g.dtype), updates, trace)
        count = optax.safe_int32_increment(state.count)
        return out, SGDMomentumState(count=count, trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _nonzero(x) -> bool:
    """False only for a Python number equal to zero (arrays count as nonzero)."""
    return not (_is_number(x) and x == 0)


def sgd(learning_rate, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False) -> optax.GradientTransformation:
    """SGD with the exact semantics of ``torch.optim.SGD``.

    ``learning_rate`` is a float or an optax schedule (step -> lr). With
    ``weight_decay != 0`` the ``update`` call needs ``params``. Under
    ``optax.inject_hyperparams`` pass ``static_args=("momentum", "dampening",
    "weight_decay")`` so that only the learning rate becomes an array.
    """
    if _is_number(learning_rate) and learning_rate < 0.0:
        raise ValueError(f"Invalid learning rate: {learning_rate}")
    if _is_number(momentum) and momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if _is_number(weight_decay) and weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if nesterov and ((_is_number(momentum) and momentum <= 0.0) or (_is_number(dampening) and dampening != 0.0)):
        raise ValueError(
            "Nesterov momentum requires momentum > 0 and zero dampening, got "
            f"momentum={momentum}, dampening={dampening}."
        )

    use_wd = _nonzero(weight_decay)
    parts = []
    if use_wd:
        parts.append(optax.add_decayed_weights(weight_decay))
    if _nonzero(momentum):
        parts.append(sgd_momentum(momentum, dampening, nesterov))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    inner = optax.chain(*parts)

    def update_fn(updates, state, params=None):
        if params is None and use_wd:
            raise ValueError("sgd with weight_decay != 0 needs params: call tx.update(grads, state, params).")
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update_fn)


def accumulate(tx: optax.GradientTransformation, every_k: int) -> optax.GradientTransformation:
    """``optax.MultiSteps(tx, every_k)``: ``tx`` applied to the mean of every ``every_k`` gradients.

    At ``every_k == 1`` MultiSteps' state (a run may resume with another ``every_k``) and its updates,
    without its conditional and its accumulator (a tree of zeros the size of the parameters, read and
    written every step): the update then fuses with SGD's arithmetic, 30-37 ms of a 730 ms
    semi_resnet18 training step on 2 CPU cores (benchmarks/README.md). A state saved in the middle of
    an accumulation (``mini_step > 0``) has its partial gradients dropped, where MultiSteps would
    spend one step on applying nothing.
    """
    multi = optax.MultiSteps(tx, every_k_schedule=every_k)
    if every_k != 1:
        return multi.gradient_transformation()

    def update_fn(updates, state, params=None):
        updates, inner_state = tx.update(updates, state.inner_opt_state, params)
        step = optax.safe_increment(state.gradient_step)
        mini_step = jnp.zeros_like(state.mini_step)  # with it, MultiSteps at k > 1 ignores acc_grads
        return updates, state._replace(inner_opt_state=inner_state, gradient_step=step, mini_step=mini_step)

    return optax.GradientTransformation(multi.init, update_fn)


def plateau(
    factor=0.1, patience=10, threshold=1e-4, cooldown=0, min_scale=0.0
) -> optax.GradientTransformationExtraArgs:
    """``ReduceLROnPlateau(mode='min', threshold_mode='rel')`` as optax.

    Torch cuts once the number of bad epochs exceeds ``patience``; optax cuts
    when its count equals its ``patience``, hence ``patience + 1``. Torch's
    relative test ``a < best * (1 - threshold)`` is optax's with
    ``rtol=threshold, atol=0``; cooldown semantics are identical.
    Differences: torch skips a cut that changes the lr by less than its
    ``eps`` (1e-8), optax always cuts (down to ``min_scale``); optax compares
    in float32; optax rejects ``threshold == 0`` (torch allows it).
    """
    return optax.contrib.reduce_on_plateau(
        factor=factor,
        patience=patience + 1,
        rtol=threshold,
        atol=0.0,
        cooldown=cooldown,
        accumulation_size=1,
        min_scale=min_scale,
    )


def plateau_init(plateau_tx):
    """Initial state for ``plateau_tx`` (float32 scale, independent of params)."""
    return plateau_tx.init({})


def plateau_step(plateau_tx, plateau_state, val_loss):
    """Advance the plateau state by one epoch given the validation loss."""
    _, new_state = plateau_tx.update({}, plateau_state, value=val_loss)
    return new_state
