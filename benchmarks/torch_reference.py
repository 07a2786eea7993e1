"""An independent PyTorch reference of the 3D ResNet-18 and the Semi-ResNet-18 (NCDHW, nn.Conv3d).

Written from ``shared/reference/architecture.md`` (ResNet row), not from the Flax code:

* ``resnet18_3d`` (Hara et al., shortcut type B): conv 7x7x7 stride (1, 2, 2) padding 3, BN, ReLU,
  max-pool 3x3x3 stride 2 padding 1; stages of 2 BasicBlocks with 64/128/256/512 planes, 3x3x3
  kernels, stride 2 in T, H and W at the first block of stages 2-4; global average pool, FC.
* ``semi_resnet18`` ([2, 1], 1, [1, 1, 2]): conv 1x7x7 stride (1, 2, 2) padding (0, 3, 3), BN, ReLU,
  max-pool 1x3x3 stride (1, 2, 2) padding (0, 1, 1); spatial blocks (1x3x3): 2 x 64 planes, then
  1 x 128 planes with stride (1, 2, 2), then the same 1x3x3 max-pool; temporal blocks (3x1x1):
  1 x 128, then temporal max-pool (3, 1, 1) stride (2, 1, 1) padding (1, 0, 0); spatio-temporal
  blocks (3x3x3): 1 x 256 (stride 1), 1 x 256 (stride 2), 2 x 512 (first stride 2); single head.
* Projection shortcut (1x1x1 conv + BN, with the block's stride) wherever the stride is not 1 or the
  channel count changes. BatchNorm epsilon 1e-5. Convolutions have no bias.

Module names are chosen so that the Flax variable tree maps one to one:
``conv1``, ``bn1``, blocks ``{stage}_{i}`` holding ``conv1``, ``bn1``, ``conv2``, ``bn2``,
``downsample_conv``, ``downsample_bn``, and the classifier ``fc``.

    from benchmarks import torch_reference
    net = torch_reference.create("semi_resnet18", num_classes=101, width=1.0).eval()
    torch_reference.load_flax_variables(net, variables)      # Flax {'params', 'batch_stats'}
    logits = net(torch_reference.clip_to_torch(clip))        # clip: [N, T, H, W, 3] (NDHWC)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

# (kernel, padding, stride pattern) of the three convolution kinds; s is a stage's stride.
KINDS = {
    "spatial": ((1, 3, 3), (0, 1, 1), lambda s: (1, s, s)),
    "temporal": ((3, 1, 1), (1, 0, 0), lambda s: (s, 1, 1)),
    "spatiotemporal": ((3, 3, 3), (1, 1, 1), lambda s: (s, s, s)),
}

# Pools as (kernel, stride, padding), PyTorch semantics (implicit -inf padding for max-pooling).
SPATIAL_POOL = ((1, 3, 3), (1, 2, 2), (0, 1, 1))
TEMPORAL_POOL = ((3, 1, 1), (2, 1, 1), (1, 0, 0))
CUBE_POOL = ((3, 3, 3), (2, 2, 2), (1, 1, 1))

# Each stage: (name, blocks, planes, kind, first stride, pool after the stage or None).
LAYOUTS: dict[str, dict[str, Any]] = {
    "resnet18_3d": dict(
        stem_kt=7,
        stem_pool=CUBE_POOL,
        stages=(
            ("layer1", 2, 64, "spatiotemporal", 1, None),
            ("layer2", 2, 128, "spatiotemporal", 2, None),
            ("layer3", 2, 256, "spatiotemporal", 2, None),
            ("layer4", 2, 512, "spatiotemporal", 2, None),
        ),
    ),
    "semi_resnet18": dict(
        stem_kt=1,
        stem_pool=SPATIAL_POOL,
        stages=(
            ("layer1", 2, 64, "spatial", 1, None),
            ("layer2", 1, 128, "spatial", 2, SPATIAL_POOL),
            ("temporal", 1, 128, "temporal", 1, TEMPORAL_POOL),
            ("layer3a", 1, 256, "spatiotemporal", 1, None),
            ("layer3b", 1, 256, "spatiotemporal", 2, None),
            ("layer4", 2, 512, "spatiotemporal", 2, None),
        ),
    ),
}


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)


class BasicBlock3d(nn.Module):
    """Two convolutions of one kind with BN and ReLU, plus an identity or projection shortcut."""

    def __init__(self, in_planes: int, planes: int, kind: str, stride: int):
        super().__init__()
        kernel, padding, stride_of = KINDS[kind]
        strides = stride_of(stride)
        self.conv1 = nn.Conv3d(in_planes, planes, kernel, strides, padding, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel, 1, padding, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        if strides != (1, 1, 1) or in_planes != planes:
            self.downsample_conv = nn.Conv3d(in_planes, planes, 1, strides, 0, bias=False)
            self.downsample_bn = _bn(planes)
        else:
            self.downsample_conv = None
            self.downsample_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample_conv is None:
            identity = x
        else:
            identity = self.downsample_bn(self.downsample_conv(x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class VideoResNet(nn.Module):
    """A stem, residual stages with optional pools after them, global average pool and FC."""

    def __init__(self, stem_kt: int, stem_pool, stages: Sequence[tuple], num_classes: int = 101, width: float = 1.0):
        super().__init__()
        c = scaled(64, width)
        self.conv1 = nn.Conv3d(3, c, (stem_kt, 7, 7), (1, 2, 2), (stem_kt // 2, 3, 3), bias=False)
        self.bn1 = _bn(c)
        self.relu = nn.ReLU(inplace=True)
        self.stem_pool = nn.MaxPool3d(*stem_pool)
        self.block_names: list[str] = []
        self.pools = nn.ModuleDict()
        in_planes = c
        for name, blocks, planes, kind, stride, pool in stages:
            planes = scaled(planes, width)
            for i in range(blocks):
                block_name = f"{name}_{i}"
                self.add_module(block_name, BasicBlock3d(in_planes, planes, kind, stride if i == 0 else 1))
                self.block_names.append(block_name)
                in_planes = planes
            if pool is not None:
                self.pools[f"after_{name}_{blocks - 1}"] = nn.MaxPool3d(*pool)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, T, H, W] (either memory format) -> logits [N, num_classes]."""
        x = self.stem_pool(self.relu(self.bn1(self.conv1(x))))
        for name in self.block_names:
            x = getattr(self, name)(x)
            pool_key = f"after_{name}"
            if pool_key in self.pools:
                x = self.pools[pool_key](x)
        return self.fc(torch.flatten(x.mean(dim=(2, 3, 4)), 1))


def create(name: str, num_classes: int = 101, width: float = 1.0) -> VideoResNet:
    """``'resnet18_3d'`` or ``'semi_resnet18'`` as a torch module (train mode, like any nn.Module)."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(LAYOUTS)}")
    return VideoResNet(num_classes=num_classes, width=width, **LAYOUTS[name])


def resnet18_3d(num_classes: int = 101, width: float = 1.0) -> VideoResNet:
    return create("resnet18_3d", num_classes, width)


def semi_resnet18(num_classes: int = 101, width: float = 1.0) -> VideoResNet:
    return create("semi_resnet18", num_classes, width)


def clip_to_torch(clip, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """An NDHWC clip (numpy or jax array) -> a float32 NCDHW tensor in ``memory_format``."""
    x = torch.from_numpy(np.array(clip, dtype=np.float32, copy=True)).permute(0, 4, 1, 2, 3)
    return x.contiguous(memory_format=memory_format)


# Flax leaf name -> (torch attribute, converter from the numpy array).
_CONV = {"kernel": ("weight", lambda a: a.transpose(4, 3, 0, 1, 2)), "bias": ("bias", lambda a: a)}  # DHWIO->OIDHW
_DENSE = {"kernel": ("weight", lambda a: a.T), "bias": ("bias", lambda a: a)}  # [in, out] -> [out, in]
_NORM_PARAMS = {"scale": ("weight", lambda a: a), "bias": ("bias", lambda a: a)}
_NORM_STATS = {"mean": ("running_mean", lambda a: a), "var": ("running_var", lambda a: a)}


def _walk(tree: Mapping, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _walk(value, prefix + (str(key),))
        else:
            yield prefix, str(key), value


def load_flax_variables(torch_model: nn.Module, variables: Mapping) -> nn.Module:
    """Copies Flax ``{'params': ..., 'batch_stats': ...}`` into ``torch_model`` (in place; returns it).

    Conv kernels DHWIO -> OIDHW, Dense kernels [in, out] -> Linear weights [out, in], BatchNorm
    scale/bias -> weight/bias and mean/var -> running_mean/running_var. Module paths are matched by
    name (``layer1_0/conv1`` -> ``layer1_0.conv1``). Raises if a Flax leaf has no target, a shape
    differs, or a torch parameter or running statistic is left unset.
    """
    sections = {"params": None, "batch_stats": None}
    unknown = set(variables) - set(sections)
    if unknown:
        raise ValueError(f"unexpected variable collections {sorted(unknown)}; expected params, batch_stats")
    torch_state = torch_model.state_dict()
    expected = {k for k in torch_state if not k.endswith("num_batches_tracked")}
    written: set[str] = set()
    with torch.no_grad():
        for collection in ("params", "batch_stats"):
            for path, leaf_name, value in _walk(variables.get(collection, {})):
                module_path = ".".join(path)
                try:
                    module = torch_model.get_submodule(module_path)
                except AttributeError as e:
                    raise KeyError(f"{collection}/{'/'.join(path)}: no torch module {module_path!r}") from e
                if isinstance(module, nn.Conv3d):
                    table = _CONV
                elif isinstance(module, nn.Linear):
                    table = _DENSE
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    table = _NORM_PARAMS if collection == "params" else _NORM_STATS
                else:
                    raise TypeError(f"{module_path}: cannot load into {type(module).__name__}")
                if leaf_name not in table:
                    raise KeyError(f"{collection}/{'/'.join(path)}/{leaf_name}: no torch counterpart")
                attr, convert = table[leaf_name]
                target = getattr(module, attr)
                array = np.array(convert(np.asarray(value, dtype=np.float32)), order="C", copy=True)
                if tuple(target.shape) != array.shape:
                    raise ValueError(
                        f"{module_path}.{attr}: torch shape {tuple(target.shape)} != converted Flax shape {array.shape}"
                    )
                target.copy_(torch.from_numpy(array))
                written.add(f"{module_path}.{attr}")
    missing = expected - written
    if missing:
        raise KeyError(f"torch tensors not set from the Flax variables: {sorted(missing)}")
    return torch_model
