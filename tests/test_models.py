"""The model zoo: Table 2 counts, Table A1 shapes, forward passes, options and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app

from semicnn_jax import inference, models, paper

EXPECTED_NAMES = {
    "vgg16_2d",
    "c3d",
    "semi_vgg16",
    *(f"resnet{d}_{k}" for d in (18, 34, 50, 101, 152) for k in ("2d", "3d")),
    *(f"semi_resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"densenet{d}_{k}" for d in (121, 169) for k in ("2d", "3d")),
    "semi_densenet121",
    "semi_densenet169",
}


def count(name, **opts):
    return models.num_params(models.abstract_variables(models.create(name, **opts))["params"])


def test_registry_has_the_24_models():
    assert set(models.names()) == EXPECTED_NAMES and len(models.names()) == 24


@pytest.mark.parametrize("family", paper.FAMILIES)
def test_table2_totals_reproduce_the_paper(family):
    for column, name in zip((0, 1, 3), paper.model_names(family)):
        n = count(name)
        assert round(n / 1e6, 1) == paper.TABLE2[family][column], name
        assert n == paper.TABLE2_EXACT[family][column], name


def test_table2_alternative_readings():
    for family, exact in paper.SEMI_DENSENET_B.items():
        n = count(f"semi_{family}", reading="b")
        assert n == exact and round(n / 1e6, 1) == paper.TABLE2[family][3]
    # architecture.md: the released code's concatenated head gives 31.8 M for Semi-ResNet-18.
    assert round(count("semi_resnet18", head="multilevel") / 1e6, 1) == 31.8


# Table A1 (and architecture.md): stage output shapes at 16x224x224, as (T, H, W, C).
TABLE_A1 = {
    **{
        f"semi_resnet{d}": ((16, 14, 14, 128 * e), (8, 14, 14, 128 * e), (2, 4, 4, 512 * e))
        for d, e in ((18, 1), (34, 1), (50, 4), (101, 4), (152, 4))
    },
    "semi_vgg16": ((16, 14, 14, 512), (8, 14, 14, 512), (2, 3, 3, 512)),
    # DenseNet: 64 + 6*32 = 256 -> 128 + 6*32 = 320; + 6*32 = 512 -> 256; final channels per st_config.
    "semi_densenet121": ((16, 14, 14, 320), (8, 14, 14, 256), (2, 3, 3, 512 + 16 * 32)),
    "semi_densenet169": ((16, 14, 14, 320), (8, 14, 14, 256), (2, 3, 3, 640 + 32 * 32)),
}


@pytest.mark.parametrize("name", sorted(TABLE_A1))
def test_table_a1_stage_shapes(name):
    model = models.create(name)
    variables = models.abstract_variables(model, (2, 16, 224, 224, 3))
    clip = jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32)
    logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, clip)
    assert logits.shape == (2, 101) and logits.dtype == jnp.float32
    assert set(feats) == {"spatial", "temporal", "spatiotemporal"}
    for key, shape in zip(("spatial", "temporal", "spatiotemporal"), TABLE_A1[name]):
        assert feats[key].shape == (2,) + shape, key


def numpy_init(abstract, seed=0):
    """Fan-in scaled random weights, unit BatchNorm, from shapes alone (random init compiles slowly
    on CPU, one compilation per parameter shape)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "'var'" in name or "'scale'" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "'mean'" in name or "'bias'" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


# Smallest (frames, size) each layout survives at, so forward tests stay cheap.
SMALL_INPUT = {
    "c3d": (16, 32),
    "semi_vgg16": (8, 64),
    "densenet121_3d": (16, 32),
    "densenet169_3d": (16, 32),
    "semi_densenet121": (8, 64),
    "semi_densenet169": (8, 64),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_forward_train_and_eval_at_tiny_width(name):
    frames, size = SMALL_INPUT.get(name, (4, 32))
    model = models.create(name, num_classes=7, width=1 / 16)
    clip = jax.random.normal(jax.random.key(0), (2, frames, size, size, 3))
    variables = numpy_init(models.abstract_variables(model, clip.shape))  # real init: Table 2 tests
    assert set(variables) == {"params", "batch_stats"} or name in ("vgg16_2d", "c3d", "semi_vgg16")

    def train_and_eval(variables, clip):
        logits, updates = model.apply(
            variables, clip, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
        )
        return logits, updates, model.apply(variables, clip, train=False, return_features=True)

    if "densenet" in name:
        # Every dense layer has new shapes, so op-by-op execution compiles each op anew: one jit
        # without XLA's backend optimisations (most of the compile time) is cheaper.
        train_and_eval = (
            jax.jit(train_and_eval)
            .lower(variables, clip)
            .compile(compiler_options={"xla_backend_optimization_level": 0})
        )
    # Other models run op by op: their repeated blocks reuse the compiled ops.
    logits, updates, (eval_logits, feats) = train_and_eval(variables, clip)
    assert logits.shape == (2, 7) and bool(jnp.isfinite(logits).all())
    if "batch_stats" in variables:  # train mode moves the running statistics
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), variables["batch_stats"], updates["batch_stats"])
        assert all(jax.tree.leaves(changed))
    assert eval_logits.shape == (2, 7) and bool(jnp.isfinite(eval_logits).all())
    assert not np.allclose(logits, eval_logits)  # batch statistics vs running averages
    assert feats and all(f.shape[0] == 2 for f in feats.values())


def test_eval_mode_uses_running_averages_and_train_mode_batch_statistics():
    model = models.create("semi_resnet18", num_classes=5, width=1 / 16)
    clip = jax.random.normal(jax.random.key(0), (4, 4, 32, 32, 3))
    variables = numpy_init(models.abstract_variables(model, clip.shape))
    other = clip.at[1:].set(jax.random.normal(jax.random.key(3), (3, 4, 32, 32, 3)) * 5)
    eval_a, eval_b = model.apply(variables, clip), model.apply(variables, other)
    np.testing.assert_allclose(eval_a[0], eval_b[0], rtol=1e-5, atol=1e-6)  # examples independent
    train_a, _ = model.apply(variables, clip, train=True, mutable=["batch_stats"])
    train_b, _ = model.apply(variables, other, train=True, mutable=["batch_stats"])
    assert not np.allclose(train_a[0], train_b[0], atol=1e-4)  # batch statistics couple examples


def test_batchnorm_synchronises_over_axis_name():
    """Per-device batch statistics averaged over 'batch' equal the full batch's statistics."""
    assert jax.local_device_count() >= 2, "conftest should give two CPU devices"
    clip = jax.random.normal(jax.random.key(0), (4, 4, 32, 32, 3)) * 2 + 1
    plain = models.create("resnet18_3d", num_classes=3, width=1 / 16)
    synced = models.create("resnet18_3d", num_classes=3, width=1 / 16, axis_name="batch")
    variables = numpy_init(models.abstract_variables(plain, clip.shape))
    whole_logits, whole = plain.apply(variables, clip, train=True, mutable=["batch_stats"])
    step = jax.pmap(
        lambda v, x: synced.apply(v, x, train=True, mutable=["batch_stats"]), axis_name="batch", in_axes=(None, 0)
    )
    shard_logits, shards = step(variables, clip.reshape(2, 2, *clip.shape[1:]))
    np.testing.assert_allclose(
        shard_logits.reshape(4, 3), whole_logits, rtol=1e-3, atol=1e-3 * float(jnp.abs(whole_logits).max())
    )
    jax.tree.map(
        lambda s, w: np.testing.assert_allclose(s[0], w, rtol=2e-4, atol=1e-5),
        shards["batch_stats"],
        whole["batch_stats"],
    )


def test_bfloat16_computation_keeps_float32_parameters():
    clip = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
    f32 = models.create("semi_resnet18", num_classes=5, width=1 / 8)
    bf16 = models.create("semi_resnet18", num_classes=5, width=1 / 8, dtype="bfloat16")
    variables = numpy_init(models.abstract_variables(bf16, clip.shape))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out16, out32 = bf16.apply(variables, clip), f32.apply(variables, clip)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.abs(out32).max()) + 0.05)


def test_predict_fn_any_batch_size_and_dtype():
    model = models.create("semi_resnet18", num_classes=6, width=1 / 16)
    variables = numpy_init(models.abstract_variables(model, (1, 4, 32, 32, 3)))
    for dtype in (None, jnp.bfloat16):
        predict = inference.make_predict_fn(model, dtype=dtype)
        for batch in (1, 3):
            probs = predict(variables, jax.random.uniform(jax.random.key(batch), (batch, 4, 32, 32, 3)))
            assert probs.shape == (batch, 6) and probs.dtype == jnp.float32
            np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits = model.apply(variables, jnp.ones((2, 4, 32, 32, 3)))
    np.testing.assert_allclose(
        inference.make_predict_fn(model)(variables, jnp.ones((2, 4, 32, 32, 3))),
        jax.nn.softmax(logits),
        rtol=1e-5,
        atol=1e-7,
    )


def test_unknown_name_and_option_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet19_3d'.*semi_resnet18"):
        models.create("resnet19_3d")
    with pytest.raises(ValueError, match="unknown option.*'head'.*valid options: num_classes"):
        models.create("resnet18_3d", head="multilevel")
    with pytest.raises(ValueError, match="head='double'"):
        models.create("semi_resnet18", head="double")
    with pytest.raises(ValueError, match="reading='c'"):
        models.create("semi_densenet121", reading="c")
    with pytest.raises(ValueError, match="width must be > 0"):
        models.create("c3d", width=0)


def test_wrong_clip_shape_and_too_small_clip_are_refused():
    model = models.create("semi_resnet18", width=1 / 16)
    with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\], got \(2, 32, 32, 3\)"):
        models.abstract_variables(model, (2, 32, 32, 3))
    with pytest.raises(ValueError, match="clip too small"):
        models.abstract_variables(models.create("c3d", width=1 / 16), (1, 2, 32, 32, 3))


def test_tables_params_command_reports_every_family_reproduced(capsys):
    from semicnn_jax import tables

    assert tables.main(["tables", "params"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("all reproduced") and "NO" not in out
    assert all(f"| {family} |" in out for family in paper.FAMILIES)
    with pytest.raises(app.UsageError, match="python -m semicnn_jax.tables params"):
        tables.main(["tables", "flops"])
