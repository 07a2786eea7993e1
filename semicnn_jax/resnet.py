"""ResNets: torchvision's 2D ResNet, Hara's 3D ResNet and the Semi-ResNet, from one layout description.

A model is a stem followed by stages. Each :class:`Stage` names its blocks' convolution kind
(spatial 1x3x3, temporal 3x1x1 or spatio-temporal 3x3x3), its first stride, an optional
max-pool after it, and the feature name under which ``return_features`` reports its output.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1_0/conv1`` ...), so the
ImageNet converter maps ``layer1.0.conv1.weight`` to ``layer1_0/conv1/kernel``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from semicnn_jax import base, layers
from semicnn_jax.base import KINDS, SPATIAL_POOL, TEMPORAL_POOL, Pool


@dataclasses.dataclass(frozen=True)
class Stage:
    """``blocks`` residual blocks of ``planes`` planes, of convolution ``kind``."""

    name: str
    blocks: int
    planes: int
    kind: str
    stride: int = 1
    pool: Pool | None = None
    feature: str | None = None


@dataclasses.dataclass(frozen=True)
class Stem:
    """The first convolution (7x7 spatially, ``kt`` frames) and its max-pool."""

    kt: int
    pool: Pool


class _Block(nn.Module):
    """A residual block: ``planes`` planes, convolutions of ``kind``, first stride ``stride``."""

    planes: int
    kind: str
    stride: int
    conv: Any
    norm: Any


class BasicBlock(_Block):
    """Two convolutions of ``kind`` and a shortcut (ResNet-18/34)."""

    expansion = 1

    @nn.compact
    def __call__(self, x):
        kernel, pad, strides = KINDS[self.kind]
        y = self.conv(self.planes, kernel, strides(self.stride), pad, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.planes, kernel, (1, 1, 1), pad, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        return nn.relu(y + shortcut(self, x, self.planes * self.expansion, strides(self.stride)))


class Bottleneck(_Block):
    """1x1x1, ``kind`` (strided), 1x1x1 with 4x expansion, and a shortcut (ResNet-50/101/152)."""

    expansion = 4

    @nn.compact
    def __call__(self, x):
        kernel, pad, strides = KINDS[self.kind]
        y = self.conv(self.planes, (1, 1, 1), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.planes, kernel, strides(self.stride), pad, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.planes * self.expansion, (1, 1, 1), name="conv3")(y)
        y = self.norm(name="bn3")(y)
        return nn.relu(y + shortcut(self, x, self.planes * self.expansion, strides(self.stride)))


def shortcut(block: nn.Module, x, features: int, strides):
    """Identity, or a 1x1x1 projection + BN where the shape changes (Hara's type B)."""
    if strides == (1, 1, 1) and x.shape[-1] == features:
        return x
    y = block.conv(features, (1, 1, 1), strides, name="downsample_conv")(x)
    return block.norm(name="downsample_bn")(y)


class ResNet(base.VideoClassifier):
    """A ResNet over clips [N, T, H, W, 3].

    Attributes:
      stem: the first convolution's temporal extent and the pool after it.
      stages: the residual stages, in order.
      block: BasicBlock or Bottleneck.
      stack_frames: 2D baseline: stack the T frames into 3T channels first.
      head: ``'single'`` (FC on the last stage) or ``'multilevel'`` (FC on the concatenated
        pooled features of every stage that names a feature: the released Semi-CNN code).
    """

    stem: Stem = Stem(1, SPATIAL_POOL)
    stages: Sequence[Stage] = ()
    block: Any = BasicBlock
    stack_frames: bool = False
    head: str = "single"

    @nn.compact
    def __call__(self, clip, train: bool = False, return_features: bool = False):
        base.check_clip(clip)
        x = layers.frames_to_channels(clip) if self.stack_frames else clip
        conv, norm = self.conv_factory(), self.norm_factory(train)
        kt = self.stem.kt
        x = conv(self.channels(64), (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = self.stem.pool.max(x)
        features = {}
        for stage in self.stages:
            for i in range(stage.blocks):
                x = self.block(
                    self.channels(stage.planes),
                    stage.kind,
                    stage.stride if i == 0 else 1,
                    conv,
                    norm,
                    name=f"{stage.name}_{i}",
                )(x)
            if stage.pool is not None:
                x = stage.pool.max(x)
            if stage.feature is not None:
                features[stage.feature] = x
        if self.head == "multilevel":
            pooled = jnp.concatenate([layers.global_avg_pool(f) for f in features.values()], axis=-1)
        else:
            pooled = layers.global_avg_pool(x)
        return base.output(self.classify(pooled), features, return_features)


def _standard_stages(depth_blocks, kind):
    return tuple(
        Stage(f"layer{i + 1}", n, 64 * 2**i, kind, 1 if i == 0 else 2, feature=f"layer{i + 1}")
        for i, n in enumerate(depth_blocks)
    )


# Blocks per stage of the 2D/3D ResNets, and the Semi-ResNet layouts ([ss], tt, [st]) of the paper.
DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
SEMI_LAYOUTS = {
    18: ((2, 1), 1, (1, 1, 2)),
    34: ((3, 2), 2, (3, 3, 3)),
    50: ((3, 2), 2, (3, 3, 3)),
    101: ((3, 2), 2, (12, 11, 3)),
    152: ((3, 4), 4, (18, 18, 3)),
}


def resnet_2d(depth: int) -> dict:
    """torchvision's ResNet on the frames stacked into channels."""
    block, blocks = DEPTHS[depth]
    return dict(stem=Stem(1, SPATIAL_POOL), stages=_standard_stages(blocks, "spatial"), block=block, stack_frames=True)


def resnet_3d(depth: int) -> dict:
    """Hara et al.'s 3D ResNet with shortcut type B."""
    block, blocks = DEPTHS[depth]
    return dict(
        stem=Stem(7, Pool((3, 3, 3), (2, 2, 2), (1, 1, 1))),
        stages=_standard_stages(blocks, "spatiotemporal"),
        block=block,
    )


def semi_resnet(depth: int) -> dict:
    """Semi-ResNet ([ss], tt, [st]): spatial, temporal, then spatio-temporal stages."""
    block, _ = DEPTHS[depth]
    (s1, s2), tt, (st1, st2, st3) = SEMI_LAYOUTS[depth]
    stages = (
        Stage("layer1", s1, 64, "spatial"),
        Stage("layer2", s2, 128, "spatial", 2, pool=SPATIAL_POOL, feature="spatial"),
        Stage("temporal", tt, 128, "temporal", pool=TEMPORAL_POOL, feature="temporal"),
        Stage("layer3a", st1, 256, "spatiotemporal"),
        Stage("layer3b", st2, 256, "spatiotemporal", 2),
        Stage("layer4", st3, 512, "spatiotemporal", 2, feature="spatiotemporal"),
    )
    return dict(stem=Stem(1, SPATIAL_POOL), stages=stages, block=block)
