"""The VGG row: torchvision's VGG-16 on stacked frames, C3D, and Semi-VGG-16 (9, 1, 3).

Convolutions have biases and no BatchNorm; the classifier is FC 4096 - FC 4096 - FC classes with
dropout. The flatten fixes the classifier's input size to the clip size: the paper's counts hold
at 16x224x224, and any other clip size builds a correspondingly smaller (or larger) FC6.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from semicnn_jax import base, layers
from semicnn_jax.base import CUBE_POOL, FRAME_POOL, KINDS, TEMPORAL_POOL, Pool

# (name, channels) per convolution, None for a pool. torchvision's vgg16.features, in order.
VGG16_FEATURES = (
    ("conv1_1", 64),
    ("conv1_2", 64),
    None,
    ("conv2_1", 128),
    ("conv2_2", 128),
    None,
    ("conv3_1", 256),
    ("conv3_2", 256),
    ("conv3_3", 256),
    None,
    ("conv4_1", 512),
    ("conv4_2", 512),
    ("conv4_3", 512),
    None,
    ("conv5_1", 512),
    ("conv5_2", 512),
    ("conv5_3", 512),
    None,
)
# Semi-VGG-16's spatial part: conv1_1 ... conv4_2, pooled after conv1_2, conv2_2, conv3_3, conv4_2.
SEMI_VGG16_SPATIAL = VGG16_FEATURES[:12] + (None,)


class _VGGBase(base.VideoClassifier):
    """Conv + ReLU stacks and the VGG classifier."""

    dropout_rate: float = 0.5

    def conv_relu(self, x, name: str, channels: int, kind: str = "spatial"):
        kernel, pad, _ = KINDS[kind]
        conv = self.conv_factory(kernel_init=layers.kaiming_fan_out, use_bias=True)
        return nn.relu(conv(self.channels(channels), kernel, (1, 1, 1), pad, name=name)(x))

    def classifier(self, x, train: bool):
        fc_init = nn.initializers.normal(0.01)
        x = x.reshape(x.shape[0], -1)
        for name in ("fc6", "fc7"):
            x = nn.Dense(self.channels(4096), dtype=self.dtype, kernel_init=fc_init, name=name)(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return self.classify(x, kernel_init=fc_init, name="fc8")


def _stack(model: _VGGBase, x, spec: Sequence, pool: Pool, features: dict):
    n_pools = 0
    for item in spec:
        if item is None:
            x = pool.max(x)
            n_pools += 1
            features[f"pool{n_pools}"] = x
        else:
            x = model.conv_relu(x, *item)
    return x


class VGG16(_VGGBase):
    """torchvision's vgg16 with the T frames stacked into 3T input channels."""

    @nn.compact
    def __call__(self, clip, train: bool = False, return_features: bool = False):
        base.check_clip(clip)
        features: dict = {}
        x = _stack(self, layers.frames_to_channels(clip), VGG16_FEATURES, FRAME_POOL, features)
        x = layers.adaptive_avg_pool_2d(x, (7, 7))
        return base.output(self.classifier(x, train), features, return_features)


class C3D(_VGGBase):
    """C3D (Tran et al.): eight 3x3x3 convolutions, five pools, FC 4096 x 2."""

    @nn.compact
    def __call__(self, clip, train: bool = False, return_features: bool = False):
        base.check_clip(clip)
        features = {}
        x = clip
        blocks = (
            (("conv1a", 64),),
            (("conv2a", 128),),
            (("conv3a", 256), ("conv3b", 256)),
            (("conv4a", 512), ("conv4b", 512)),
            (("conv5a", 512), ("conv5b", 512)),
        )
        pools = (FRAME_POOL, CUBE_POOL, CUBE_POOL, CUBE_POOL, Pool((2, 2, 2), (2, 2, 2), (0, 1, 1)))
        for i, (convs, pool) in enumerate(zip(blocks, pools)):
            for name, channels in convs:
                x = self.conv_relu(x, name, channels, "spatiotemporal")
            x = pool.max(x)
            features[f"pool{i + 1}"] = x
        return base.output(self.classifier(x, train), features, return_features)


class SemiVGG16(_VGGBase):
    """Semi-VGG-16 (9, 1, 3): nine 1x3x3 VGG convolutions, one 3x1x1, three 3x3x3."""

    @nn.compact
    def __call__(self, clip, train: bool = False, return_features: bool = False):
        base.check_clip(clip)
        x = _stack(self, clip, SEMI_VGG16_SPATIAL, FRAME_POOL, {})
        features = {"spatial": x}
        x = TEMPORAL_POOL.max(self.conv_relu(x, "temporal_conv", 512, "temporal"))
        features["temporal"] = x
        x = self.conv_relu(x, "st_conv1", 512, "spatiotemporal")
        x = CUBE_POOL.max(self.conv_relu(x, "st_conv2", 512, "spatiotemporal"))
        x = CUBE_POOL.max(self.conv_relu(x, "st_conv3", 512, "spatiotemporal"))
        features["spatiotemporal"] = x
        return base.output(self.classifier(x, train), features, return_features)
