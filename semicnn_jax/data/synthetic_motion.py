"""Embedded ``synthetic_motion`` dataset: the class is defined only by motion.

Each clip shows one asymmetric two-coloured shape (random blob, polygon or star with
a coloured 120-degree wedge) on a static cluttered background (soft colour blobs
and texture) with per-frame pixel noise. Eight classes (``CLASS_NAMES``): the shape
moves left, right, up or down, rotates clockwise or counter-clockwise (on screen)
about a pivot outside it (so it turns and travels along an arc), grows or shrinks.
Generated on the fly from explicit keys; no files.

Everything visible in one frame (shape, colours, background, position, orientation,
size) is drawn independently of the label; the label only picks which velocity is
non-zero and its sign. The state is drawn at the anchor frame ``T // 2`` and the
clip moves backwards and forwards from it:

* position lives on a torus (the shape wraps around the image edges), so it is
  uniform at *every* frame for every class;
* orientation is uniform on the circle at every frame;
* log-size is uniform at the anchor frame, which therefore carries no class
  information at all. Size cannot wrap, so for grow/shrink it is shifted by
  ``+-rate * (t - T // 2)`` at other frames: a weak cue at the first/last frames
  (a linear classifier on the exact object area and position reaches 0.15-0.19
  top-1 there vs 0.125 chance, 0.11 at the anchor frame; on pixels it stays at
  chance at every frame).

Clips are float32 ``[N, T, size, size, 3]`` in ``[0, 1]``. Whole-clip motion is
independent of ``T``: 25-45% of the image width, 135-225 degrees about a pivot
30-40% of the image width away, or a x1.4-1.7 size change. Call the functions
outside ``jit`` (they run two jitted stages, which is ~4x faster on CPU than one
fused program). ``batch_for_indices`` makes clip ``i`` from ``fold_in(key(seed), i)``
with label ``i % NUM_CLASSES``, so a fixed eval set is identical every epoch and any
shard of indices can be produced independently (bitwise identical whatever the
batch it is rendered in). The source (``SyntheticMotion``) serves them as uint8 frames, as every other
source does, and keeps fixed sets in memory once rendered (``CACHE_BYTES``).
"""

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semicnn_jax.data import source

CLASS_NAMES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
)
NUM_CLASSES: int = len(CLASS_NAMES)

# Unit velocity per class: (x, y, angle, log-size). Image y points down, so a
# positive angle rate turns the shape clockwise on screen.
_MOTION = np.array(
    [
        [-1, 0, 0, 0],
        [1, 0, 0, 0],
        [0, -1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, -1, 0],
        [0, 0, 0, 1],
        [0, 0, 0, -1],
    ],
    np.float32,
)

_RADIUS = (0.1, 0.26)  # outer radius / image size at the anchor frame (log-uniform)
_SHIFT = (0.25, 0.45)  # translation over the whole clip / image size
_TURN = (0.75 * math.pi, 1.25 * math.pi)  # rotation over the whole clip (radians)
_PIVOT = (0.3, 0.4)  # distance of the rotation's pivot from the shape's centre / image size
_ZOOM = (math.log(1.4), math.log(1.7))  # log-size change over the whole clip
_NUM_BLOBS = 8
_HARMONICS = 10  # Fourier harmonics of the rendered outline
_SAMPLES = 64  # angles used to fit them
_NUM_UNIFORMS = 96  # random scalars per clip
_TWO_PI = 2.0 * math.pi


def _hsv(h, s, v):
    """HSV (matching shapes, hue wraps) -> RGB with a trailing axis of 3."""
    h, s, v = (jnp.asarray(a, jnp.float32)[..., None] for a in (h, s, v))
    k = jnp.mod(jnp.array([5.0, 3.0, 1.0]) + 6.0 * h, 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _hash(x):
    """Murmur3 finaliser on uint32: cheap per-pixel noise bits."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _noise3(bits):
    """Three channels of uniform noise in [-0.5, 0.5] from 32 random bits each."""
    bits = bits[..., None] >> jnp.array([0, 10, 20], jnp.uint32)
    return (bits & 1023).astype(jnp.float32) / 1023.0 - 0.5


def _stream(bits):
    """``draw(lo, hi, shape)`` handing out consecutive uniforms from ``bits``.

    One threefry call per clip keeps compilation fast; the counter only lives at
    trace time, so the traced function stays pure.
    """
    u = (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))
    used = [0]

    def draw(lo, hi, shape=()):
        n = math.prod(shape)
        assert used[0] + n <= u.shape[0], "increase _NUM_UNIFORMS"
        out = u[used[0] : used[0] + n].reshape(shape)
        used[0] += n
        return lo + (hi - lo) * out

    return draw


def _tree_sum(x):
    """Sum over the last axis (a power of 2) by halving: elementwise adds only, so the
    result is bitwise independent of the batch shape, unlike XLA reductions/dots."""
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def _profile(phi, p):
    """Radial profile r(phi) > 0 of the shape in its own frame (unnormalised)."""
    harm = jnp.arange(2.0, 5.0)
    blob = 1.0 + jnp.sum(p["amp"] * jnp.cos(harm * phi[..., None] + p["phase"][:3]), -1)
    sector = _TWO_PI / p["points"]
    polygon = jnp.cos(sector / 2) / jnp.cos(jnp.mod(phi, sector) - sector / 2)
    tip = jnp.abs(2.0 * jnp.mod(phi / sector, 1.0) - 1.0)
    star = 1.0 - p["depth"] + p["depth"] * tip
    base = jnp.where(p["kind"] == 0, blob, jnp.where(p["kind"] == 1, polygon, star))
    # The first harmonic removes every rotational symmetry.
    return base * (1.0 + p["asym"] * jnp.cos(phi + p["phase"][3]))


def _shape_coef(draw):
    """Random shape (blob, 3-5 sided polygon or 3-5 pointed star), Fourier coded.

    Returns cosine/sine coefficients ``[2, _HARMONICS + 1]`` of the profile
    normalised to max 1, so ``radius`` is the outer radius.
    """
    p = dict(
        kind=jnp.floor(draw(0.0, 3.0)),
        points=jnp.floor(draw(3.0, 6.0)),
        amp=draw(0.05, 0.22, (3,)),
        phase=draw(0.0, _TWO_PI, (4,)),
        asym=draw(0.15, 0.3),
        depth=draw(0.3, 0.55),
    )
    phi = jnp.linspace(0.0, _TWO_PI, _SAMPLES, endpoint=False)
    r = _profile(phi, p)
    r = r / jnp.max(r)
    k = jnp.arange(_HARMONICS + 1.0)[:, None]
    scale = jnp.where(k == 0, 1.0, 2.0) / _SAMPLES
    cos, sin = scale * jnp.cos(k * phi) * r, scale * jnp.sin(k * phi) * r
    return jnp.stack([_tree_sum(cos), _tree_sum(sin)])


def _background(draw, texture_bits):
    """Static clutter ``[H, W, 3]``: muted base colour, soft colour blobs, texture."""
    size = texture_bits.shape[0]
    n = _NUM_BLOBS
    base = _hsv(draw(0, 1), draw(0, 0.5), draw(0.25, 0.75))
    centers = draw(0.0, size, (n, 2))
    sigma = draw(0.04, 0.18, (n,)) * size
    colours = _hsv(draw(0, 1, (n,)), draw(0, 0.7, (n,)), draw(0.1, 0.9, (n,)))
    pix = jnp.arange(size, dtype=jnp.float32) + 0.5
    d2 = (pix[None, None, :] - centers[:, 0, None, None]) ** 2
    d2 = d2 + (pix[None, :, None] - centers[:, 1, None, None]) ** 2
    weight = 0.8 * jnp.exp(-d2 / (2.0 * sigma[:, None, None] ** 2))  # [n, H, W]
    img = jnp.broadcast_to(base, (size, size, 3))
    for b in range(n):
        img = img + weight[b, ..., None] * (colours[b] - img)
    return img + 0.1 * _noise3(texture_bits)  # texture std ~0.03


def _draw(pix, cx, cy, theta, radius, coef):
    """Coverage of the shape and of its wedge at one state, each ``[H, W]``.

    No angle is computed: ``cos/sin(k * phi)`` come from powers of the unit vector
    ``(u, v)`` in the shape's frame, much cheaper than ``atan2`` on CPU.
    """
    size = pix.shape[0]
    dx = jnp.mod(pix[None, :] - cx + size / 2, size) - size / 2  # torus offsets
    dy = jnp.mod(pix[:, None] - cy + size / 2, size) - size / 2
    rho = jnp.sqrt(dx**2 + dy**2 + 1e-6)
    c, s = jnp.cos(theta), jnp.sin(theta)
    u = (dx * c + dy * s) / rho  # cos(phi) in the shape's frame
    v = (dy * c - dx * s) / rho  # sin(phi)
    edge = jnp.full_like(rho, coef[0, 0])
    ck, sk = u, v
    for k in range(1, _HARMONICS + 1):
        edge = edge + coef[0, k] * ck + coef[1, k] * sk
        ck, sk = ck * u - sk * v, sk * u + ck * v
    alpha = jnp.clip(radius * edge - rho + 0.5, 0.0, 1.0)
    wedge = jnp.clip((u - 0.5) * rho / 0.87 + 0.5, 0.0, 1.0)  # 120 degree sector
    return alpha, wedge


def _clip_setup(key, label, num_frames, size):
    """Everything random about one clip, plus its static background."""
    bits = jax.random.bits(key, (_NUM_UNIFORMS + 2,), jnp.uint32)
    draw = _stream(bits[:-2])
    hue = draw(0, 1)
    main = _hsv(hue, draw(0.55, 1), draw(0.65, 1))
    accent = _hsv(hue + draw(0.25, 0.75), draw(0.55, 1), draw(0.65, 1))  # other hue

    # Anchor state at frame T // 2: the same distribution for every class.
    cx, cy = draw(0.0, size, (2,))
    theta = draw(0.0, _TWO_PI)
    log_r = draw(math.log(_RADIUS[0] * size), math.log(_RADIUS[1] * size))
    # Per-frame rates, scaled so the whole-clip motion does not depend on T.
    shift = draw(*_SHIFT) * size
    rates = jnp.stack([shift, shift, draw(*_TURN), draw(*_ZOOM)])
    rates = rates / max(num_frames - 1, 1) * jnp.asarray(_MOTION)[label]
    t = jnp.arange(num_frames, dtype=jnp.float32) - num_frames // 2
    state = jnp.stack([cx, cy, theta, log_r]) + t[:, None] * rates  # [T, 4]
    # Rotation is rigid about a pivot outside the shape: the shape turns and travels along an arc
    # (applied in _clip_frames, where the result does not depend on the batch shape).
    pivot = jnp.stack([cx, cy]) + draw(*_PIVOT) * size * _unit(draw(0.0, _TWO_PI))

    # Noise bits [T + 1, H, W]: one slice of static texture, then one per frame.
    idx = jnp.arange((num_frames + 1) * size * size, dtype=jnp.uint32)
    noise_bits = _hash(_hash(idx ^ bits[-2]) + bits[-1]).reshape(num_frames + 1, size, size)
    return dict(
        coef=_shape_coef(draw),
        main=main,
        accent=accent,
        state=state,
        pivot=pivot,
        theta=theta,
        background=_background(draw, noise_bits[0]),
        noise_bits=noise_bits[1:],
        sigma=draw(0.01, 0.04),
    )


def _unit(angle):
    return jnp.stack([jnp.cos(angle), jnp.sin(angle)])


def _rotate(angle, xy):
    """``xy [..., 2]`` turned by ``angle [..., 1]``: clockwise on screen for a positive angle (image y
    points down). Elementwise, not a matmul, so the result does not depend on the batch shape."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    x, y = xy[..., :1], xy[..., 1:]
    return jnp.concatenate([c * x - s * y, s * x + c * y], -1)


def _clip_frames(c):
    """Draw the moving shape over the background and add pixel noise."""
    size = c["background"].shape[0]
    pix = jnp.arange(size, dtype=jnp.float32) + 0.5
    state = c["state"]  # turning about the pivot moves the shape only for the rotation classes
    xy = c["pivot"] + _rotate(state[:, 2:3] - c["theta"], state[:, :2] - c["pivot"])

    def draw(s, xy):
        return _draw(pix, xy[0], xy[1], s[2], jnp.exp(s[3]), c["coef"])

    alpha, wedge = jax.vmap(draw)(state, xy)
    alpha, wedge = alpha[..., None], wedge[..., None]
    colour = c["main"] + wedge * (c["accent"] - c["main"])
    frames = c["background"] + alpha * (colour - c["background"])
    noise = math.sqrt(12.0) * c["sigma"] * _noise3(c["noise_bits"])
    return jnp.clip(frames + noise, 0.0, 1.0)


# Two jitted stages: in one XLA program the CPU backend fuses the background and
# outline computations into the per-pixel/frame/channel loop and recomputes them,
# which is about 4x slower.
_setup = jax.jit(jax.vmap(_clip_setup, in_axes=(0, 0, None, None)), static_argnums=(2, 3))
_frames = jax.jit(jax.vmap(_clip_frames))


def render_keys(keys: jax.Array, labels: jax.Array, num_frames: int = 16, size: int = 64) -> jax.Array:
    """Render clip ``n`` from ``keys[n]`` and ``labels[n]``: float32 ``[N, T, H, W, 3]``."""
    return _frames(_setup(keys, jnp.asarray(labels, jnp.int32), num_frames, size))


def render_batch(key: jax.Array, labels: jax.Array, num_frames: int = 16, size: int = 64) -> jax.Array:
    """Render one clip per label: float32 ``[N, T, size, size, 3]`` in ``[0, 1]``.

    Clip ``n`` uses ``jax.random.split(key, N)[n]``; ``labels`` are ints in
    ``[0, NUM_CLASSES)``.
    """
    labels = jnp.asarray(labels, jnp.int32)
    return render_keys(jax.random.split(key, labels.shape[0]), labels, num_frames, size)


def sample_batch(key: jax.Array, batch_size: int, num_frames: int = 16, size: int = 64) -> tuple[jax.Array, jax.Array]:
    """Random batch: (clips ``float32[B, T, size, size, 3]``, labels ``int32[B]``).

    Labels are i.i.d. uniform over the classes.
    """
    k_label, k_clip = jax.random.split(key)
    labels = jax.random.randint(k_label, (batch_size,), 0, NUM_CLASSES, jnp.int32)
    return render_batch(k_clip, labels, num_frames, size), labels


def labels_for_indices(indices) -> jax.Array:
    """Deterministic label of each example index: ``index % NUM_CLASSES``."""
    return jnp.asarray(indices, jnp.int32) % NUM_CLASSES


@jax.jit
def _index_keys(seed, indices):
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)


def batch_for_indices(seed: int, indices, num_frames: int = 16, size: int = 64) -> tuple[jax.Array, jax.Array]:
    """Examples ``indices`` of the dataset ``seed``: (clips, labels).

    Clip ``i`` depends only on ``(seed, i, num_frames, size)``: its key is
    ``fold_in(key(seed), i)`` and its label ``i % NUM_CLASSES``, so shards of an
    index range can be generated independently (e.g. one per process).
    ``0 <= seed < 2**32`` and ``0 <= i < 2**31``.
    """
    indices = jnp.asarray(indices, jnp.int32)
    labels = labels_for_indices(indices)
    keys = _index_keys(jnp.asarray(seed, jnp.uint32), indices)
    return render_keys(keys, labels, num_frames, size), labels


def example(seed: int, index: int, num_frames: int = 16, size: int = 64) -> tuple[jax.Array, int]:
    """Single example ``index``: (clip ``float32[T, size, size, 3]``, label)."""
    clips, labels = batch_for_indices(seed, [index], num_frames, size)
    return clips[0], int(labels[0])


# ---------------------------------------------------------------------------- the source

FIELDS = {"train_size": 4096, "eval_size": 512, "fresh_clips": False}  # the dataset.* fields the source uses

# Rendered clips kept in memory when the fixed training set and the evaluation set fit in this many bytes
# (the demo's 4096 + 512 clips of 8x48x48: 243 MiB): every epoch after the first reads them instead of
# rendering them again, which costs 5 ms of the CPU per batch of 32 (7 % of the demo's training step).
CACHE_BYTES = 1 << 30


@jax.jit
def _quantize(clips: jax.Array) -> jax.Array:
    return jnp.round(clips * 255.0).astype(jnp.uint8)


class SyntheticMotion:
    """The embedded dataset as a source: clips whose class is defined only by motion (no files needed)."""

    def __init__(self, config: ml_collections.ConfigDict):
        ds = config.dataset
        self.seed = int(config.seed)
        self.num_frames, self.size = int(config.num_frames), int(config.crop_size)
        self.info = source.DatasetInfo(
            "synthetic_motion",
            CLASS_NAMES,
            int(ds.get("train_size", FIELDS["train_size"])),
            int(ds.get("eval_size", FIELDS["eval_size"])),
        )
        # Evaluation clips come from another seed, so they never coincide with training clips.
        self.eval_seed = (self.seed + 1_000_003) % 2**32
        # Fresh training clips every epoch (epoch e renders indices e * train_size + ...), or the same set.
        self.fresh_clips = bool(ds.get("fresh_clips", FIELDS["fresh_clips"]))

        # The fixed sets (evaluation; training unless fresh_clips), kept once rendered if they fit in CACHE_BYTES.
        sets = {self.eval_seed: self.info.num_eval}
        if not self.fresh_clips:
            sets[self.seed] = self.info.num_train
        shape = (self.num_frames, self.size, self.size, 3)
        fits = sum(sets.values()) * math.prod(shape) <= CACHE_BYTES
        # seed -> (clips uint8 [n, T, S, S, 3], rendered bool [n])
        self._cache = (
            {s: (np.zeros((n,) + shape, np.uint8), np.zeros(n, bool)) for s, n in sets.items()} if fits else {}
        )

    def _render(self, seed: int, indices: np.ndarray) -> np.ndarray:
        """The clips ``indices`` of set ``seed`` as uint8 frames (rounded as a video stores them), rendered
        once per run where the set is kept in memory (a whole batch at a time: one shape to compile, and a
        clip renders bitwise alike in any batch)."""
        clips, rendered = self._cache.get(seed, (None, None))
        if clips is not None and rendered[indices].all():
            return clips[indices]
        video = np.asarray(_quantize(batch_for_indices(seed, indices, self.num_frames, self.size)[0]))
        if clips is not None:
            clips[indices], rendered[indices] = video, True
        return video

    def train_batches(self, epoch: int, start_step: int, global_batch: int) -> Iterator[dict]:
        order = source.epoch_order(self.seed, epoch, self.info.num_train)
        rows = source.process_slice(global_batch)
        for step in range(start_step, self.info.num_train // global_batch):
            idx = order[step * global_batch : (step + 1) * global_batch][rows]
            if self.fresh_clips:
                idx = idx + epoch * self.info.num_train
            yield {
                "video": self._render(self.seed, idx),
                "label": np.asarray(labels_for_indices(idx)),
                "mask": np.ones(len(idx), bool),
            }

    def eval_batches(self, global_batch: int) -> Iterator[dict]:
        rows = source.process_slice(global_batch)
        for idx, mask in source.eval_index_batches(self.info.num_eval, global_batch):
            idx = idx[rows]
            yield {
                "video": self._render(self.eval_seed, idx),
                "label": np.asarray(labels_for_indices(idx)),
                "mask": mask[rows],
                "video_index": idx.astype(np.int32),
            }

    def skipped_files(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        """Nothing to release."""
