"""Tests for semicnn_jax.optim against torch.optim as the reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from semicnn_jax import optim

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 3)).astype(np.float32)
Y = RNG.normal(size=(8, 4)).astype(np.float32)
W0 = RNG.normal(size=(3, 4)).astype(np.float32)
B0 = RNG.normal(size=(4,)).astype(np.float32)
STEPS = 25


def jax_loss(params):
    pred = jnp.tanh(X @ params["w"] + params["b"])
    return jnp.mean((pred - Y) ** 2)


def torch_loss(w, b):
    pred = torch.tanh(torch.from_numpy(X) @ w + b)
    return torch.mean((pred - torch.from_numpy(Y)) ** 2)


def init_params():
    return {"w": jnp.asarray(W0), "b": jnp.asarray(B0)}


def torch_lr(t, schedule, lr):
    return float(schedule(t)) if schedule is not None else lr(t)


SETTINGS = [
    dict(lr=0.1),  # plain SGD
    dict(lr=0.1, weight_decay=1e-2),
    dict(lr=0.1, momentum=0.9, dampening=0.9, weight_decay=1e-4),  # paper
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    dict(lr=0.1, momentum=0.5, dampening=0.3),
]


def compare_with_torch(tx, lr_at, kwargs, set_lr=None):
    """Run tx (jitted) and torch.optim.SGD side by side; compare each step."""
    params = init_params()
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(jax_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    w = torch.tensor(W0, requires_grad=True)
    b = torch.tensor(B0, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=lr_at(0), **kwargs)
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(t)
        if set_lr is not None:
            state = set_lr(state, lr_at(t))
        opt.zero_grad()
        torch_loss(w, b).backward()
        opt.step()
        params, state = step(params, state)
        np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(params["b"], b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(params["w"], W0)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_sgd_matches_torch(setting):
    kwargs = dict(setting)
    lr = kwargs.pop("lr")
    compare_with_torch(optim.sgd(lr, **kwargs), lambda t: lr, kwargs)


@pytest.mark.parametrize("setting", [SETTINGS[0], SETTINGS[2], SETTINGS[4]], ids=str)
def test_sgd_schedule_matches_torch(setting):
    kwargs = dict(setting)
    lr = kwargs.pop("lr")
    schedule = optax.exponential_decay(lr, transition_steps=1, decay_rate=0.9)
    compare_with_torch(optim.sgd(schedule, **kwargs), lambda t: float(schedule(t)), kwargs)


def test_sgd_inject_hyperparams_lr_change_matches_torch():
    kwargs = dict(momentum=0.9, dampening=0.9, weight_decay=1e-4)
    tx = optax.inject_hyperparams(optim.sgd, static_args=("momentum", "dampening", "weight_decay"))(
        learning_rate=0.1, **kwargs
    )

    def set_lr(state, lr):
        state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        return state

    lr_at = lambda t: 0.1 if t < 10 else (0.01 if t < 20 else 0.001)
    compare_with_torch(tx, lr_at, kwargs, set_lr=set_lr)


def test_sgd_state_is_array_pytree():
    tx = optim.sgd(optax.constant_schedule(0.1), momentum=0.9, dampening=0.9, weight_decay=1e-4)
    state = tx.init(init_params())
    leaves = jax.tree.leaves(state)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)


def test_sgd_pmap_matches_single_device():
    tx = optim.sgd(0.1, momentum=0.9, dampening=0.9, weight_decay=1e-4)
    params = init_params()
    state = tx.init(params)
    grads = jax.grad(jax_loss)(params)
    stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * jax.local_device_count()), tree)
    upd_p, state_p = jax.pmap(lambda g, s, p: tx.update(g, s, p))(stack(grads), stack(state), stack(params))
    upd, state = tx.update(grads, state, params)
    for a, b in zip(jax.tree.leaves((upd, state)), jax.tree.leaves((upd_p, state_p))):
        np.testing.assert_allclose(b[0], a, rtol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_sgd_multisteps_equals_mean_grad(k):
    kwargs = dict(momentum=0.9, dampening=0.9, weight_decay=1e-2)
    multi = optim.accumulate(optim.sgd(0.1, **kwargs), k)
    single = optim.sgd(0.1, **kwargs)
    params_m = params_s = init_params()
    state_m, state_s = multi.init(params_m), single.init(params_s)

    @jax.jit
    def multi_step(grads, state, params):
        updates, state = multi.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def single_step(grads, state, params):
        updates, state = single.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(k)
    for _ in range(4):
        gs = [
            {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
            for _ in range(k)
        ]
        for i, g in enumerate(gs):
            before = params_m
            params_m, state_m = multi_step(g, state_m, params_m)
            if i < k - 1:
                jax.tree.map(np.testing.assert_array_equal, params_m, before)
        mean_g = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *gs)
        params_s, state_s = single_step(mean_g, state_s, params_s)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), params_m, params_s)


def test_accumulate_one_step_is_multisteps():
    """At every_k == 1 ``optim.accumulate`` skips MultiSteps' machinery: same state tree, updates and state."""
    kwargs = dict(momentum=0.9, dampening=0.9, weight_decay=1e-2)
    fast, multi = optim.accumulate(optim.sgd(0.1, **kwargs), 1), optax.MultiSteps(optim.sgd(0.1, **kwargs), 1)
    params = init_params()
    state_f, state_m = fast.init(params), multi.init(params)
    assert jax.tree.structure(state_f) == jax.tree.structure(state_m)
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
        upd_f, state_f = jax.jit(fast.update)(grads, state_f, params)
        upd_m, state_m = jax.jit(multi.update)(grads, state_m, params)
        for a, b in zip(jax.tree.leaves((upd_f, state_f)), jax.tree.leaves((upd_m, state_m))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        params = optax.apply_updates(params, upd_f)
    assert int(state_f.gradient_step) == 3

    # Resumed at k = 1 from the middle of a k = 2 accumulation: the partial gradient is dropped (the update
    # is the plain SGD step), and a later resume at k = 2 accumulates afresh.
    sgd, two = optim.sgd(0.1, **kwargs), optim.accumulate(optim.sgd(0.1, **kwargs), 2)
    _, half = two.update(grads, two.init(params), params)
    assert int(half.mini_step) == 1
    upd_f, state_f = fast.update(grads, half, params)
    np.testing.assert_allclose(upd_f["w"], sgd.update(grads, half.inner_opt_state, params)[0]["w"], rtol=1e-6)
    assert int(state_f.mini_step) == 0
    g1, g2 = ({"w": np.full((3, 4), v, np.float32), "b": np.full(4, v, np.float32)} for v in (1.0, 3.0))
    _, state_2 = two.update(g1, state_f, params)
    upd_2, _ = two.update(g2, state_2, params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    np.testing.assert_allclose(upd_2["w"], sgd.update(mean, state_f.inner_opt_state, params)[0]["w"], rtol=1e-6)


def test_sgd_value_errors():
    params = init_params()
    tx = optim.sgd(0.1, weight_decay=1e-4)
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None)
    optim.sgd(0.1).update(params, optim.sgd(0.1).init(params))  # no wd: params not needed

    t_params = [torch.zeros(2, requires_grad=True)]
    for bad in [dict(momentum=0.9, dampening=0.5), dict(momentum=0.0)]:
        with pytest.raises(ValueError):
            torch.optim.SGD(t_params, lr=0.1, nesterov=True, **bad)
        with pytest.raises(ValueError, match="Nesterov"):
            optim.sgd(0.1, nesterov=True, **bad)
    for bad in [
        dict(learning_rate=-0.1),
        dict(learning_rate=0.1, momentum=-0.5),
        dict(learning_rate=0.1, weight_decay=-1.0),
    ]:
        with pytest.raises(ValueError):
            optim.sgd(**bad)


# ---------------------------------------------------------------- plateau


def _sequences():
    rng = np.random.default_rng(1)
    t = np.arange(60)
    return {
        "monotone": 1.0 / (1.0 + t),
        "flat": np.ones(60),
        "below_threshold": (1.0 - 5e-5) ** t,
        "noisy": 1.0 - 0.003 * t + 0.01 * rng.normal(size=60),
        "noisy_small": 1.0 + 2e-5 * rng.normal(size=60) - 3e-5 * t,
        "long_plateaus": np.concatenate(
            [np.linspace(2.0, 1.0, 10), np.ones(30), np.linspace(1.0, 0.5, 5), 0.5 * np.ones(40)]
        ),
        "cross_zero": np.concatenate([np.linspace(0.5, -0.5, 15), -0.5 * np.ones(25), np.linspace(-0.5, -0.6, 10)]),
    }


PLATEAU_CONFIGS = [
    dict(patience=10),
    dict(patience=2),
    dict(patience=2, cooldown=3),
    dict(patience=10, cooldown=2),
    dict(patience=2, factor=0.5, min_scale=0.2),
    dict(patience=3, factor=0.5, threshold=1e-3, cooldown=1),
]


@pytest.mark.parametrize("config", PLATEAU_CONFIGS, ids=str)
def test_plateau_matches_torch(config):
    base_lr = 0.1
    factor = config.get("factor", 0.1)
    threshold = config.get("threshold", 1e-4)
    cooldown = config.get("cooldown", 0)
    min_scale = config.get("min_scale", 0.0)
    tx = optim.plateau(
        factor=factor,
        patience=config["patience"],
        threshold=threshold,
        cooldown=cooldown,
        min_scale=min_scale,
    )
    step = jax.jit(functools.partial(optim.plateau_step, tx))
    n_cuts = []
    for name, seq in _sequences().items():
        seq = seq.astype(np.float32)
        torch_lrs = {}
        for eps in (0.0, 1e-8):  # 1e-8 is torch's default
            opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="min",
                factor=factor,
                patience=config["patience"],
                threshold=threshold,
                threshold_mode="rel",
                cooldown=cooldown,
                min_lr=base_lr * min_scale,
                eps=eps,
            )
            torch_lrs[eps] = []
            for v in seq:
                sched.step(float(v))
                torch_lrs[eps].append(opt.param_groups[0]["lr"])
        state = optim.plateau_init(tx)
        jax_lrs = []
        for v in seq:
            state = step(state, v)
            jax_lrs.append(base_lr * float(state.scale))
        np.testing.assert_allclose(jax_lrs, torch_lrs[0.0], rtol=1e-6, err_msg=name)
        # With torch's default eps, cuts smaller than 1e-8 are skipped: the
        # sequences agree as long as the learning rate stays above ~1e-7.
        keep = np.asarray(torch_lrs[1e-8]) > 1e-7
        np.testing.assert_allclose(
            np.asarray(jax_lrs)[keep], np.asarray(torch_lrs[1e-8])[keep], rtol=1e-6, err_msg=name
        )
        torch_lrs = torch_lrs[0.0]
        n_cuts.append(len(set(np.round(torch_lrs, 12))) - 1)
    assert max(n_cuts) >= 2  # the sequences do exercise repeated cuts


def test_plateau_state_and_eager_step():
    tx = optim.plateau(patience=0)
    state = optim.plateau_init(tx)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    state = optim.plateau_step(tx, state, 1.0)
    state = optim.plateau_step(tx, state, 1.0)  # 1 bad epoch > patience 0: cut
    np.testing.assert_allclose(float(state.scale), 0.1, rtol=1e-6)
