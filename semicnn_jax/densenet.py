"""DenseNets: torchvision's 2D DenseNet-BC, the Hara-style 3D DenseNet and the Semi-DenseNet.

Parameter names follow torchvision (``conv0``, ``norm0``, ``denseblock1/denselayer1/conv1``,
``transition1/conv``, ``norm5``, ``classifier``).

Semi-DenseNet ([6, 6], [6], [st1, st2, st3]) has two readings that both reproduce Table 2:

* ``reading='a'`` (default, the authors' released code): the spatial stage ends in a pool only,
  and the head is one FC on the concatenated pooled spatial, temporal and final features.
* ``reading='b'``: the spatial stage ends in BN-ReLU-1x1x1 conv (no compression) + pool, and the
  head is one FC on the final features.

``head`` may override the reading's head (``'single'`` or ``'multilevel'``).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from semicnn_jax import base, layers
from semicnn_jax.base import CUBE_POOL, FRAME_POOL, KINDS, SPATIAL_POOL, TEMPORAL_POOL, Pool

GROWTH, BN_SIZE, INIT_FEATURES = 32, 4, 64
# Dense layers per block by depth: torchvision's block_config, and the semi model's three
# spatio-temporal blocks (the released code).
BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32)}
SEMI_ST_BLOCKS = {121: (12, 12, 16), 169: (16, 16, 32)}


class DenseLayer(nn.Module):
    """BN-ReLU-1x1x1 conv to 4k, BN-ReLU-``kind`` conv to k, concatenated to the input."""

    growth: int
    kind: str
    conv: object
    norm: object

    @nn.compact
    def __call__(self, x):
        kernel, pad, _ = KINDS[self.kind]
        y = nn.relu(self.norm(name="norm1")(x))
        y = self.conv(BN_SIZE * self.growth, (1, 1, 1), name="conv1")(y)
        y = nn.relu(self.norm(name="norm2")(y))
        y = self.conv(self.growth, kernel, (1, 1, 1), pad, name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
    layers: int
    growth: int
    kind: str
    conv: object
    norm: object

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            x = DenseLayer(self.growth, self.kind, self.conv, self.norm, name=f"denselayer{i + 1}")(x)
        return x


class Transition(nn.Module):
    """BN-ReLU-1x1x1 conv to ``features`` channels, then average pooling."""

    features: int
    pool: Pool
    conv: object
    norm: object

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.norm(name="norm")(x))
        x = self.conv(self.features, (1, 1, 1), name="conv")(x)
        return self.pool.avg(x)


class _DenseNetBase(base.VideoClassifier):
    def stem(self, x, kt: int, pool: Pool, conv, norm):
        x = conv(self.channels(INIT_FEATURES), (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), name="conv0")(x)
        return pool.max(nn.relu(norm(name="norm0")(x)))

    def block(self, x, name, n_layers, kind, conv, norm):
        return DenseBlock(n_layers, self.channels(GROWTH), kind, conv, norm, name=name)(x)

    def final(self, x, norm):
        return nn.relu(norm(name="norm5")(x))


class DenseNet(_DenseNetBase):
    """DenseNet-BC: 2D (frames stacked into channels) or 3D (Hara-style), per ``kind``."""

    block_config: Sequence[int] = (6, 12, 24, 16)
    kind: str = "spatial"  # 'spatial' on stacked frames: the 2D DenseNet; 'spatiotemporal': 3D.

    @nn.compact
    def __call__(self, clip, train: bool = False, return_features: bool = False):
        base.check_clip(clip)
        conv, norm = self.conv_factory(layers.kaiming_fan_in), self.norm_factory(train)
        is_2d = self.kind == "spatial"
        x = layers.frames_to_channels(clip) if is_2d else clip
        stem_pool = SPATIAL_POOL if is_2d else Pool((3, 3, 3), (2, 2, 2), (1, 1, 1))
        x = self.stem(x, 1 if is_2d else 7, stem_pool, conv, norm)
        features = {}
        for i, n_layers in enumerate(self.block_config):
            x = self.block(x, f"denseblock{i + 1}", n_layers, self.kind, conv, norm)
            features[f"block{i + 1}"] = x
            if i + 1 < len(self.block_config):
                x = Transition(
                    x.shape[-1] // 2, FRAME_POOL if is_2d else CUBE_POOL, conv, norm, name=f"transition{i + 1}"
                )(x)
        x = self.final(x, norm)
        return base.output(self.classify(layers.global_avg_pool(x), name="classifier"), features, return_features)


class SemiDenseNet(_DenseNetBase):
    """Semi-DenseNet ([6, 6], [6], st_config); see the module docstring for the readings."""

    st_config: Sequence[int] = (12, 12, 16)
    reading: str = "a"
    head: str | None = None

    @nn.compact
    def __call__(self, clip, train: bool = False, return_features: bool = False):
        base.check_clip(clip)
        if self.reading not in ("a", "b"):
            raise ValueError(f"reading must be 'a' or 'b', got {self.reading!r}")
        head = self.head or ("multilevel" if self.reading == "a" else "single")
        conv, norm = self.conv_factory(layers.kaiming_fan_out), self.norm_factory(train)
        x = self.stem(clip, 1, SPATIAL_POOL, conv, norm)
        # Spatial stage: the first 6 + 6 layers of torchvision's DenseNet (ImageNet-initialisable).
        x = self.block(x, "denseblock1", 6, "spatial", conv, norm)
        x = Transition(x.shape[-1] // 2, FRAME_POOL, conv, norm, name="transition1")(x)
        x = self.block(x, "denseblock2", 6, "spatial", conv, norm)
        # The released code's head taps each stage through an in-place ReLU, so the next stage
        # sees the rectified features too.
        x = nn.relu(x)
        pooled = [x]
        if self.reading == "b":
            x = Transition(x.shape[-1], FRAME_POOL, conv, norm, name="spatial_transition")(x)
        else:
            x = FRAME_POOL.avg(x)
        features = {"spatial": x}
        # Temporal stage.
        x = nn.relu(self.block(x, "temporal_block", 6, "temporal", conv, norm))
        pooled.append(x)
        x = Transition(x.shape[-1] // 2, TEMPORAL_POOL, conv, norm, name="temporal_transition")(x)
        features["temporal"] = x
        # Spatio-temporal stage: no compression after the first block, halving after the second.
        st1, st2, st3 = self.st_config
        x = self.block(x, "st_block1", st1, "spatiotemporal", conv, norm)
        x = Transition(x.shape[-1], CUBE_POOL, conv, norm, name="st_transition1")(x)
        x = self.block(x, "st_block2", st2, "spatiotemporal", conv, norm)
        x = Transition(x.shape[-1] // 2, CUBE_POOL, conv, norm, name="st_transition2")(x)
        x = self.block(x, "st_block3", st3, "spatiotemporal", conv, norm)
        x = self.final(x, norm)
        features["spatiotemporal"] = x
        pooled.append(x)
        if head == "multilevel":
            head_in = jnp.concatenate([layers.global_avg_pool(p) for p in pooled], axis=-1)
        elif head == "single":
            head_in = layers.global_avg_pool(x)
        else:
            raise ValueError(f"head must be 'single' or 'multilevel', got {head!r}")
        return base.output(self.classify(head_in, name="classifier"), features, return_features)
