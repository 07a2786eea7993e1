"""Tests for the ``synthetic_motion`` dataset."""

import jax
import numpy as np
import pytest

from semicnn_jax.data import synthetic_motion as sm

T, S = 8, 32  # small clips keep the file fast
CHANCE = 1.0 / sm.NUM_CLASSES


def test_class_names():
    assert sm.NUM_CLASSES == len(sm.CLASS_NAMES) == 8
    assert len(set(sm.CLASS_NAMES)) == sm.NUM_CLASSES
    assert all(isinstance(n, str) and n for n in sm.CLASS_NAMES)


def test_shapes_dtype_range():
    clips, labels = sm.sample_batch(jax.random.key(0), 4, T, S)
    assert clips.shape == (4, T, S, S, 3) and clips.dtype == np.float32
    assert labels.shape == (4,) and labels.dtype == np.int32
    clips = np.asarray(clips)
    assert np.isfinite(clips).all() and clips.min() >= 0.0 and clips.max() <= 1.0
    assert ((0 <= labels) & (labels < sm.NUM_CLASSES)).all()
    assert sm.render_batch(jax.random.key(1), [0, 7], T, S).shape == (2, T, S, S, 3)
    # Legacy raw uint32 keys work too.
    assert sm.sample_batch(jax.random.PRNGKey(0), 4, T, S)[0].shape == (4, T, S, S, 3)


def test_default_size():
    clips, labels = sm.sample_batch(jax.random.key(0), 2)
    assert clips.shape == (2, 16, 64, 64, 3) and labels.shape == (2,)


def test_determinism_and_sharding():
    a, la = sm.batch_for_indices(7, [0, 1, 2, 3], T, S)
    b, lb = sm.batch_for_indices(7, [0, 1, 2, 3], T, S)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(la, [0, 1, 2, 3])
    # A shard of the index range is bitwise the same whatever batch renders it.
    shard, _ = sm.batch_for_indices(7, [2, 3], T, S)
    np.testing.assert_array_equal(shard, a[2:])
    clip, label = sm.example(7, 1, T, S)
    np.testing.assert_array_equal(clip, a[1])
    assert label == 1
    # Documented key derivation: fold_in(key(seed), index).
    keys = jax.numpy.stack([jax.random.fold_in(jax.random.key(7), i) for i in range(4)])
    np.testing.assert_array_equal(sm.render_keys(keys, la, T, S), a)
    # Different index or seed -> different clip.
    c, _ = sm.batch_for_indices(8, [0, 1, 2, 3], T, S)
    a = np.asarray(a)
    assert not np.allclose(a[0], a[1], atol=0.05)
    assert all(not np.allclose(a[i], np.asarray(c)[i], atol=0.05) for i in range(4))
    # sample_batch is a pure function of its key.
    x, lx = sm.sample_batch(jax.random.key(3), 4, T, S)
    y, ly = sm.sample_batch(jax.random.key(3), 4, T, S)
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(lx, ly)


def test_label_balance():
    counts = np.bincount(np.asarray(sm.labels_for_indices(np.arange(800))))
    np.testing.assert_array_equal(counts, 100)
    _, labels = sm.sample_batch(jax.random.key(5), 2048, 1, 8)
    counts = np.bincount(np.asarray(labels), minlength=sm.NUM_CLASSES)
    sd = np.sqrt(2048 * CHANCE * (1 - CHANCE))
    assert np.abs(counts - 2048 * CHANCE).max() < 5 * sd, counts


# ---------------------------------------------------------------------------
# Statistical checks on 2000 clips: one frame carries no class information,
# motion does.

N, CHUNK, N_TRAIN = 2000, 500, 1500


def _pool(frames, k=8):
    """Average-pool ``[n, S, S, 3]`` frames to ``k x k`` cells -> ``[n, 3 k^2]``."""
    n = frames.shape[0]
    return frames.reshape(n, k, S // k, k, S // k, 3).mean((2, 4)).reshape(n, -1)


def _mask_stats(m):
    """Object area and torus centroid of ``[n, S, S]`` masks -> ``[n, 7]``."""
    area = m.sum((1, 2)) + 1e-3
    ang = 2 * np.pi * (np.arange(S) + 0.5) / S
    cols, rows = m.sum(1), m.sum(2)
    cx, sx = cols @ np.cos(ang) / area, cols @ np.sin(ang) / area
    cy, sy = rows @ np.cos(ang) / area, rows @ np.sin(ang) / area
    return np.stack([area, np.log(area), np.sqrt(area), cx, sx, cy, sy], 1)


def _global_motion(clips):
    """Pixel-only least-squares fit of (vx, vy, spin, zoom) -> ``[n, 4]``.

    Brightness constancy ``I_t = -v . grad I`` with ``v`` a translation plus a
    rotation and a scaling about the centre of the moving pixels.
    """
    g = clips.mean(-1)
    it = g[:, 1:] - g[:, :-1]
    im = 0.5 * (g[:, 1:] + g[:, :-1])
    ix = 0.5 * (np.roll(im, -1, 3) - np.roll(im, 1, 3))
    iy = 0.5 * (np.roll(im, -1, 2) - np.roll(im, 1, 2))
    w = np.abs(it).sum(1)
    moving = w > 0.3 * w.max((1, 2), keepdims=True)
    ang = 2 * np.pi * (np.arange(S) + 0.5) / S
    w = w * moving
    cx = np.arctan2(w.sum(1) @ np.sin(ang), w.sum(1) @ np.cos(ang)) * S / (2 * np.pi) - 0.5
    cy = np.arctan2(w.sum(2) @ np.sin(ang), w.sum(2) @ np.cos(ang)) * S / (2 * np.pi) - 0.5
    pos = np.arange(S)
    dx = ((pos - cx[:, None] + S / 2) % S - S / 2)[:, None, None, :]
    dy = ((pos - cy[:, None] + S / 2) % S - S / 2)[:, None, :, None]
    basis = np.stack([ix, iy, dx * iy - dy * ix, dx * ix + dy * iy], -1)
    basis = basis * moving[:, None, :, :, None]
    a = np.einsum("ntyxi,ntyxj->nij", basis, basis) + 1e-6 * np.eye(4)
    b = -np.einsum("ntyxi,ntyx->ni", basis, it)
    return np.linalg.solve(a, b[..., None])[..., 0]


@pytest.fixture(scope="module")
def stats():
    feats, labels = {}, []
    frames = {"first": 0, "anchor": T // 2, "last": T - 1}
    for start in range(0, N, CHUNK):
        idx = np.arange(start, start + CHUNK)
        clips, lab = sm.batch_for_indices(11, idx, T, S)
        # The static background (private) gives exact object masks.
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(11), i))(idx)
        bg = np.asarray(sm._setup(keys, lab, T, S)["background"])
        clips, labels = np.asarray(clips), labels + [np.asarray(lab)]
        masks = (np.abs(clips - bg[:, None]).sum(-1) > 0.3).astype(np.float32)
        add = lambda k, v: feats.setdefault(k, []).append(v)
        for name, t in frames.items():
            add("pixels_" + name, _pool(clips[:, t]))
            add("mask_" + name, _mask_stats(masks[:, t]))
        ends = [_mask_stats(masks[:, 0]), _mask_stats(masks[:, -1])]
        add("mask_first_last", np.concatenate(ends, 1))
        add("motion", _global_motion(clips))
        # Per-frame noise is bounded by sqrt(3) * 0.04 per channel, so a summed
        # channel difference above 0.45 can only come from the moving object.
        add("changed", (np.abs(clips[:, -1] - clips[:, 0]).sum(-1) > 0.45).mean((1, 2)))
        add("visible", masks.sum((2, 3)).min(1))
    out = {k: np.concatenate(v) for k, v in feats.items()}
    out["labels"] = np.concatenate(labels)
    motion = out["motion"]
    robust = np.arcsinh(motion / np.median(np.abs(motion), 0))
    out["motion_split"] = np.concatenate([np.maximum(robust, 0), np.maximum(-robust, 0)], 1)
    return out


def _ridge_accuracy(x, y, lam=1e-2):
    """Held-out top-1 of a one-vs-rest ridge classifier (first N_TRAIN rows train)."""
    mu, sd = x[:N_TRAIN].mean(0), x[:N_TRAIN].std(0) + 1e-8
    x = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    xt, yt = x[:N_TRAIN], np.eye(sm.NUM_CLASSES)[y[:N_TRAIN]]
    w = np.linalg.solve(xt.T @ xt + lam * N_TRAIN * np.eye(x.shape[1]), xt.T @ yt)
    return float((np.argmax(x[N_TRAIN:] @ w, 1) == y[N_TRAIN:]).mean())


def test_motion_happens(stats):
    assert np.mean(stats["changed"] > 0.005) > 0.98
    assert np.mean(stats["visible"] > 0) > 0.98  # the object is on screen in every frame


@pytest.mark.parametrize("frame", ["first", "anchor", "last"])
def test_single_frame_pixels_near_chance(stats, frame):
    acc = _ridge_accuracy(stats["pixels_" + frame], stats["labels"])
    assert acc < 1.6 * CHANCE, acc  # 500 held-out clips: chance 0.125 +- 0.015


def test_single_frame_object_stats_near_chance(stats):
    # Exact object area/position: nothing at the anchor frame; the grow/shrink size
    # shift leaves a weak cue at the ends of the clip (~0.18 measured).
    y = stats["labels"]
    assert _ridge_accuracy(stats["mask_anchor"], y) < 1.6 * CHANCE
    assert _ridge_accuracy(stats["mask_first"], y) < 2.0 * CHANCE
    assert _ridge_accuracy(stats["mask_last"], y) < 2.0 * CHANCE


def test_motion_features_above_chance(stats):
    y = stats["labels"]
    assert _ridge_accuracy(stats["mask_first_last"], y) > 2.5 * CHANCE
    assert _ridge_accuracy(stats["motion_split"], y) > 4.0 * CHANCE


def test_motion_direction_per_class(stats):
    # (feature, sign) of the fitted (vx, vy, spin, zoom) for each class; image y
    # points down, so clockwise on screen is a positive spin.
    expected = [(0, -1), (0, 1), (1, -1), (1, 1), (2, 1), (2, -1), (3, 1), (3, -1)]
    y, motion = stats["labels"], stats["motion"]
    for c, (j, sign) in enumerate(expected):
        frac = np.mean(np.sign(motion[y == c, j]) == sign)
        assert frac > (0.9 if c < 4 else 0.7), (sm.CLASS_NAMES[c], frac)


@pytest.mark.parametrize("fresh", [False, True])
def test_training_source_repeats_or_renews_its_clips_each_epoch(fresh):
    from experiments import demo
    from semicnn_jax.data import pipeline

    config = demo.get_config()
    config.num_frames, config.crop_size = 2, 8
    config.dataset.train_size, config.dataset.fresh_clips = 16, fresh
    source = pipeline.create(config)

    def epoch(e):  # the epoch's clips by label, in a canonical order
        batches = list(source.train_batches(e, 0, 8))
        video = np.concatenate([b["video"] for b in batches])
        order = np.lexsort(video.reshape(len(video), -1).T)
        return video[order], np.concatenate([b["label"] for b in batches])[order]

    (v0, l0), (v1, l1) = epoch(0), epoch(1)
    np.testing.assert_array_equal(np.bincount(l0, minlength=sm.NUM_CLASSES), 2)
    np.testing.assert_array_equal(np.bincount(l1, minlength=sm.NUM_CLASSES), 2)
    if fresh:  # no clip of epoch 0 comes back in epoch 1
        assert not any(np.array_equal(a, b) for a in v0 for b in v1)
    else:  # the same 16 clips in another order
        np.testing.assert_array_equal(v0, v1)
        np.testing.assert_array_equal(l0, l1)


def test_source_serves_uint8_and_renders_a_fixed_set_once(monkeypatch):
    from experiments import demo
    from semicnn_jax.data import pipeline, source

    config = demo.get_config()
    config.num_frames, config.crop_size = 2, 8
    config.dataset.train_size, config.dataset.eval_size = 16, 6
    rendered = []
    render = sm.batch_for_indices
    monkeypatch.setattr(
        sm, "batch_for_indices", lambda seed, idx, *a: rendered.append(len(idx)) or render(seed, idx, *a)
    )

    def batches(source):
        return [b for e in (0, 1) for b in source.train_batches(e, 0, 8)] + list(source.eval_batches(4))

    cached = batches(pipeline.create(config))
    assert sum(rendered) == 16 + 8  # each training clip once, the eval set (6 clips in 2 padded batches) once
    monkeypatch.setattr(sm, "CACHE_BYTES", 0)
    del rendered[:]
    uncached = batches(pipeline.create(config))
    assert sum(rendered) == 2 * 16 + 8
    for a, b in zip(cached, uncached, strict=True):
        assert a["video"].dtype == np.uint8 and set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    first = source.epoch_order(config.seed, 0, 16)[:8]  # the first batch's clips, rendered in float
    floats = np.asarray(render(config.seed, first, 2, 8)[0])
    np.testing.assert_array_equal(cached[0]["video"], np.round(floats * 255).astype(np.uint8))
