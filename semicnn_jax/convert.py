"""ImageNet initialisation: torchvision state dicts into the zoo's Flax variables, and back to disk.

    from semicnn_jax import convert
    new_variables, n = convert.from_torchvision("semi_resnet18", state_dict, variables)
    convert.save_variables("weights/semi_resnet18_imagenet.msgpack", new_variables)
    variables = convert.load_variables("weights/semi_resnet18_imagenet.msgpack", target_variables)
    mask = convert.pretrained_mask("semi_resnet18", variables["params"])   # True: from ImageNet

Which models take which weights (``--torchvision`` name in parentheses):

* 2D baselines ``vgg16_2d`` (vgg16), ``resnet{18,34,50,101,152}_2d`` (resnet*),
  ``densenet{121,169}_2d`` (densenet*): every parameter and running statistic. With T frames the
  first convolution's 3-channel kernel is inflated over the 3T stacked channels (repeated T times,
  frame-major like :func:`layers.frames_to_channels`, divided by T); a classifier with other than
  1000 classes keeps its initialisation.
* Semi models: the spatial stage only, each 2D kernel given a time axis of length 1:
  ``semi_vgg16`` conv1_1 ... conv4_2; ``semi_resnet*`` conv1, bn1, layer1 and the first ss[1]
  blocks of layer2; ``semi_densenet*`` conv0, norm0, denseblock1, transition1 and the first six
  layers of denseblock2. The moved counts are Table 2's pre-trained column.
* 3D models and C3D have no ImageNet counterpart (ValueError).

Checks: every state-dict key must exist in the torchvision architecture with its shape (so the
weights of another architecture fail), and every parameter to fill must find its key; failures raise
ValueError naming the key and both shapes. State-dict keys left unused are logged (INFO, with a
count and a summary); ``strict=True`` makes them an error. ``num_batches_tracked`` buffers have no
Flax counterpart and are skipped. Keys may carry a ``module.`` prefix (DataParallel), and
DenseNet's old ``norm.1`` key style (torchvision's download files) is accepted.

File format (one): Flax msgpack, ``flax.serialization.msgpack_serialize`` of the whole variables
tree (``{'params': ..., 'batch_stats': ...}``) as numpy arrays.

Command::

    python -m semicnn_jax.convert --model semi_resnet18 --torch_weights resnet18-f37072fd.pth \\
        --out weights/semi_resnet18_imagenet.msgpack [--num_frames 16] [--num_classes 101]
    python -m semicnn_jax.convert --model semi_resnet18 --torchvision resnet18 --out ...  # downloads
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from typing import Any, Mapping, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import traverse_util

from semicnn_jax import densenet, models, resnet, vgg

logger = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000
_NAME = re.compile(r"^(?:(semi_)(vgg16|resnet\d+|densenet\d+)|(vgg16|resnet\d+|densenet\d+)_2d)$")
_FIRST_CONV = {"vgg": "conv1_1", "resnet": "conv1", "densenet": "conv0"}
_CLASSIFIER = {"vgg": "fc8", "resnet": "fc", "densenet": "classifier"}
_SEMI_VGG16 = frozenset(item[0] for item in vgg.SEMI_VGG16_SPATIAL if item is not None)
_SEMI_DENSENET = frozenset({"conv0", "norm0", "denseblock1", "transition1", "denseblock2"})
_SEMI_RESNET = re.compile(r"^(conv1|bn1|layer[12]_\d+)$")


def _vgg_feature_index() -> dict[str, int]:
    """torchvision ``vgg16.features`` index of each convolution (a conv and its ReLU take two)."""
    index, i = {}, 0
    for item in vgg.VGG16_FEATURES:
        if item is not None:
            index[item[0]] = i
        i += 1 if item is None else 2
    return index


_VGG_FEATURE_INDEX = _vgg_feature_index()
_VGG_FC = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
_DENSENET_BLOCKS = {f"densenet{depth}": blocks for depth, blocks in densenet.BLOCKS.items()}  # torchvision's
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class Conversion(NamedTuple):
    """What :func:`convert_state_dict` did: the new tree, values moved, state-dict keys left unused."""

    variables: dict
    n: int
    unused: tuple[str, ...]


def _parse(model_name: str) -> tuple[str, str, bool]:
    """``model_name`` -> (family, torchvision architecture, is_semi)."""
    if model_name not in models.names():
        models.options(model_name)  # raises ValueError listing the valid names
    m = _NAME.match(model_name)
    if m is None:
        raise ValueError(
            f"{model_name} has no ImageNet counterpart in torchvision (3D models and C3D "
            "are trained from scratch); convertible: " + ", ".join(n for n in models.names() if _NAME.match(n))
        )
    arch = m.group(2) or m.group(3)
    return re.sub(r"\d+$", "", arch), arch, m.group(1) is not None


def _torch_key(family: str, path: tuple[str, ...]) -> str:
    """Flax path inside a collection (``('layer1_0', 'conv1', 'kernel')``) -> torchvision key."""
    *modules, leaf = path
    if family == "resnet":
        parts = [re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", m) for m in modules]
        parts = [{"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p) for p in parts]
    elif family == "vgg":
        (name,) = modules
        parts = [_VGG_FC[name] if name in _VGG_FC else f"features.{_VGG_FEATURE_INDEX[name]}"]
    else:
        parts = list(modules) if modules[0] == "classifier" else ["features", *modules]
    return ".".join(parts + [_LEAF[leaf]])


def _to_flax(family: str, path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """A torchvision tensor in the Flax layout (conv kernels DHWIO with kt = 1, Dense [in, out])."""
    if path[-1] != "kernel":
        return value
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)[None]
    if value.ndim == 2:
        if family == "vgg" and path[0] == "fc6" and value.shape[1] % 49 == 0:
            return _vgg_fc6(value)
        return value.T
    return value


def _vgg_fc6(value: np.ndarray) -> np.ndarray:
    """torchvision's fc6 [out, C*7*7] (NCHW flatten) -> Flax Dense [7*7*C, out] (NHWC flatten)."""
    out = value.shape[0]
    src = value.reshape(out, -1, 49)
    dst = np.empty((49, src.shape[1], out), value.dtype)
    for o in range(0, out, 64):  # in blocks: one strided transpose of 100 M values is 4x slower
        dst[:, :, o : o + 64] = src[o : o + 64].transpose(2, 1, 0)
    return dst.reshape(-1, out)


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{leaf}": (channels,) for leaf in ("weight", "bias", "running_mean", "running_var")}


@functools.lru_cache(maxsize=None)
def _reference(arch: str) -> dict[str, tuple[int, ...]]:
    """torchvision ``arch``'s state dict without ``num_batches_tracked``: key -> shape."""
    ref: dict[str, tuple[int, ...]] = {}
    if arch == "vgg16":
        cin = 3
        for item in vgg.VGG16_FEATURES:
            if item is not None:
                i, cout = _VGG_FEATURE_INDEX[item[0]], item[1]
                ref.update({f"features.{i}.weight": (cout, cin, 3, 3), f"features.{i}.bias": (cout,)})
                cin = cout
        for key, (n_in, n_out) in zip(_VGG_FC.values(), ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000))):
            ref.update({f"{key}.weight": (n_out, n_in), f"{key}.bias": (n_out,)})
    elif arch.startswith("resnet"):
        block, blocks = resnet.DEPTHS[int(arch[len("resnet") :])]
        bottleneck, expansion = block is resnet.Bottleneck, block.expansion
        ref.update({"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)})
        cin = 64
        for i, n in enumerate(blocks):
            planes = 64 * 2**i
            for j in range(n):
                p = f"layer{i + 1}.{j}"
                convs = (
                    [(planes, cin, 1), (planes, planes, 3), (planes * 4, planes, 1)]
                    if bottleneck
                    else [(planes, cin, 3), (planes, planes, 3)]
                )
                for c, (cout, c_in, k) in enumerate(convs, 1):
                    ref.update({f"{p}.conv{c}.weight": (cout, c_in, k, k), **_bn(f"{p}.bn{c}", cout)})
                if j == 0 and (i > 0 or cin != planes * expansion):
                    ref.update(
                        {
                            f"{p}.downsample.0.weight": (planes * expansion, cin, 1, 1),
                            **_bn(f"{p}.downsample.1", planes * expansion),
                        }
                    )
                cin = planes * expansion
        ref.update({"fc.weight": (1000, cin), "fc.bias": (1000,)})
    elif arch in _DENSENET_BLOCKS:
        ref.update({"features.conv0.weight": (64, 3, 7, 7), **_bn("features.norm0", 64)})
        c = 64
        for b, n in enumerate(_DENSENET_BLOCKS[arch], 1):
            for layer in range(1, n + 1):
                p = f"features.denseblock{b}.denselayer{layer}"
                ref.update(
                    {
                        **_bn(f"{p}.norm1", c),
                        f"{p}.conv1.weight": (128, c, 1, 1),
                        **_bn(f"{p}.norm2", 128),
                        f"{p}.conv2.weight": (32, 128, 3, 3),
                    }
                )
                c += 32
            if b < len(_DENSENET_BLOCKS[arch]):
                p = f"features.transition{b}"
                ref.update({**_bn(f"{p}.norm", c), f"{p}.conv.weight": (c // 2, c, 1, 1)})
                c //= 2
        ref.update({**_bn("features.norm5", c), "classifier.weight": (1000, c), "classifier.bias": (1000,)})
    else:
        raise ValueError(f"no torchvision reference for {arch!r}")
    return ref


def _is_pretrained(family: str, semi: bool, path: tuple[str, ...], shape: Sequence[int]) -> bool:
    """Whether the converter fills the leaf at ``path`` (inside its collection) of this shape."""
    top = path[0]
    if not semi:
        return top != _CLASSIFIER[family] or shape[-1] == IMAGENET_CLASSES
    if family == "resnet":
        return _SEMI_RESNET.match(top) is not None
    if family == "vgg":
        return top in _SEMI_VGG16
    return top in _SEMI_DENSENET


def _strip_collection(path: tuple[str, ...]) -> tuple[str, ...]:
    return path[1:] if path and path[0] in ("params", "batch_stats") else path


def pretrained_mask(model_name: str, params: Any) -> Any:
    """A pytree of bools like ``params``: True for every leaf :func:`from_torchvision` fills.

    ``params`` is the ``'params'`` collection (or the whole variables tree), arrays or
    ``jax.ShapeDtypeStruct``s. For semi models the masked sizes sum to Table 2's pre-trained column;
    for 2D models everything is masked except a classifier of other than 1000 classes.
    """
    family, _, semi = _parse(model_name)
    return jax.tree_util.tree_map_with_path(
        lambda kp, leaf: _is_pretrained(family, semi, _strip_collection(_path_names(kp)), np.shape(leaf)), params
    )


def _path_names(keypath) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keypath)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def normalize_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strips a ``module.`` prefix shared by every key and rewrites DenseNet's old ``norm.1`` keys."""
    keys = list(state_dict)
    prefix = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    return {_DENSENET_OLD_KEY.sub(r"\1\2", k[len(prefix) :]): v for k, v in state_dict.items()}


def summarize_keys(keys: Sequence[str], all_keys: Sequence[str]) -> list[str]:
    """The shortest dotted prefixes covering ``keys`` and no other key of ``all_keys`` (``layer3.*``)."""

    def prefixes(key):
        parts = key.split(".")
        return [".".join(parts[:d]) for d in range(1, len(parts) + 1)]

    total: dict[str, int] = {}
    for key in all_keys:
        for p in prefixes(key):
            total[p] = total.get(p, 0) + 1
    chosen: dict[str, int] = {}
    for key in keys:
        for p in prefixes(key):
            chosen[p] = chosen.get(p, 0) + 1
    out: list[str] = []
    for key in keys:
        for p in prefixes(key):
            if chosen[p] == total.get(p, 0):
                label = p if p == key else p + ".*"
                if label not in out:
                    out.append(label)
                break
    return out


def convert_state_dict(
    model_name: str, state_dict: Mapping[str, Any], variables: Mapping[str, Any], strict: bool = False
) -> Conversion:
    """Like :func:`from_torchvision`, also returning the state-dict keys left unused."""
    family, arch, semi = _parse(model_name)
    reference = _reference(arch)
    state = {k: v for k, v in normalize_keys(state_dict).items() if not k.endswith("num_batches_tracked")}
    for key, value in state.items():
        shape = tuple(np.shape(value))
        if key not in reference:
            raise ValueError(
                f"state dict key {key!r} (shape {shape}) does not exist in torchvision {arch}: not {arch} weights?"
            )
        if shape != reference[key]:
            raise ValueError(
                f"state dict key {key!r} has shape {shape}, torchvision {arch} has "
                f"{reference[key]}: not {arch} weights?"
            )

    flat = traverse_util.flatten_dict(flax.core.unfreeze(variables))
    new_flat = dict(flat)
    used: set[str] = set()
    n = 0
    for path, leaf in flat.items():
        collection, inner = path[0], path[1:]
        if collection not in ("params", "batch_stats") or not _is_pretrained(family, semi, inner, leaf.shape):
            continue
        where = f"{'/'.join(path)} (shape {tuple(leaf.shape)})"
        try:
            key = _torch_key(family, inner)
        except (KeyError, ValueError):
            raise ValueError(
                f"{where} has no counterpart in torchvision {arch}: are these {model_name}'s variables?"
            ) from None
        if key not in reference:
            raise ValueError(
                f"{where} maps to {key!r}, which torchvision {arch} lacks: are these {model_name}'s variables?"
            )
        if key not in state:
            raise ValueError(f"state dict has no key {key!r} (expected shape {reference[key]}) for {where}")
        value = _to_flax(family, inner, _numpy(state[key]))
        first = inner[0] == _FIRST_CONV[family] and inner[-1] == "kernel"
        if (
            first
            and not semi
            and value.shape[3] == 3
            and leaf.shape[3] % 3 == 0
            and value.shape[:3] + value.shape[4:] == leaf.shape[:3] + leaf.shape[4:]
        ):
            frames = leaf.shape[3] // 3
            value = np.tile(value, (1, 1, 1, frames, 1)) / frames  # frame-major, like frames_to_channels
        if value.shape != tuple(leaf.shape):
            raise ValueError(
                f"state dict key {key!r} of shape {tuple(np.shape(state[key]))} (in the Flax "
                f"layout {value.shape}) does not fit {where}"
            )
        new_flat[path] = jnp.asarray(value, dtype=leaf.dtype)
        used.add(key)
        if collection == "params":
            n += int(value.size)
    if n == 0:
        raise ValueError(f"nothing of the state dict fits these variables: are they {model_name}'s?")
    unused = tuple(k for k in state if k not in used)
    if unused:
        summary = ", ".join(summarize_keys(unused, list(state)))
        if strict:
            raise ValueError(f"strict: {len(unused)} state dict keys left unused by {model_name}: {summary}")
        logger.info("%s: %d state dict keys left unused: %s", model_name, len(unused), summary)
    logger.info("%s: moved %d parameter values from %d state dict keys", model_name, n, len(used))
    return Conversion(traverse_util.unflatten_dict(new_flat), n, unused)


def from_torchvision(
    model_name: str, state_dict: Mapping[str, Any], variables: Mapping[str, Any], strict: bool = False
) -> tuple[dict, int]:
    """Fills ``variables`` of zoo model ``model_name`` from a torchvision ImageNet state dict.

    Args:
      model_name: a 2D or semi model of the registry (see the module docstring).
      state_dict: torchvision key -> torch tensor or numpy array (``module.`` prefix accepted).
      variables: the model's initialised ``{'params', 'batch_stats'}``; not modified.
      strict: raise ValueError if any state-dict key is left unused (the default logs them, INFO:
        semi models leave the later ImageNet layers unused, 2D models a 1000-class classifier
        they cannot take).

    Returns:
      ``(new_variables, n)``: a new tree, and the number of parameter values filled (weights,
      biases, BatchNorm scale and bias; running statistics are filled too but not counted; an
      inflated first kernel counts at its inflated size). ``n`` is the size of the leaves
      :func:`pretrained_mask` marks.
    """
    result = convert_state_dict(model_name, state_dict, variables, strict=strict)
    return result.variables, result.n


# ---------------------------------------------------------------------------------------------------
# Files.


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
    """Writes ``variables`` as Flax msgpack (numpy arrays); the parent directory is created."""
    state = jax.tree.map(np.asarray, flax.serialization.to_state_dict(jax.device_get(variables)))
    data = flax.serialization.msgpack_serialize(state)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_variables(path: str | os.PathLike, target_variables: Mapping[str, Any] | None = None) -> dict:
    """Reads a file of :func:`save_variables`.

    With ``target_variables`` (the model's variables, or ``jax.eval_shape`` of its init) the file must
    have exactly its keys and shapes (ValueError naming the key otherwise); arrays take its dtypes.
    """
    with open(path, "rb") as f:
        restored = flax.serialization.msgpack_restore(f.read())
    if target_variables is None:
        return jax.tree.map(jnp.asarray, restored)
    got = traverse_util.flatten_dict(restored)
    want = traverse_util.flatten_dict(flax.core.unfreeze(target_variables))
    for key in want:
        if key not in got:
            raise ValueError(
                f"{path}: no {'/'.join(key)} (the model has shape {tuple(want[key].shape)}): written for another model?"
            )
    for key in got:
        if key not in want:
            raise ValueError(
                f"{path}: {'/'.join(key)} (shape {tuple(np.shape(got[key]))}) is not in the "
                "model: written for another model?"
            )
        if tuple(np.shape(got[key])) != tuple(want[key].shape):
            raise ValueError(
                f"{path}: {'/'.join(key)} has shape {tuple(np.shape(got[key]))}, the model "
                f"has {tuple(want[key].shape)}: written for another model or clip size?"
            )
    return traverse_util.unflatten_dict({k: jnp.asarray(v, dtype=want[k].dtype) for k, v in got.items()})


# ---------------------------------------------------------------------------------------------------
# Command.


def load_torch_state_dict(path: str | os.PathLike) -> dict:
    """A state dict written by ``torch.save(model.state_dict(), path)`` (CPU, ``weights_only``)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def torchvision_state_dict(name: str) -> dict:
    """torchvision's ImageNet weights ``name`` (``resnet18``, or ``resnet18:IMAGENET1K_V1``); downloads."""
    import torchvision

    arch, _, which = name.partition(":")
    weights = torchvision.models.get_model_weights(arch)[which or "DEFAULT"]
    return dict(weights.get_state_dict(progress=True))


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags (defined only when it runs, so importing this module defines none)."""
    flags.DEFINE_string("model", None, "Registry name, e.g. semi_resnet18, resnet18_2d.", flag_values=values)
    flags.DEFINE_string("torch_weights", None, "A .pth written by torch.save(model.state_dict()).", flag_values=values)
    flags.DEFINE_string(
        "torchvision", None, "torchvision weights to download: resnet18 or resnet18:IMAGENET1K_V1.", flag_values=values
    )
    flags.DEFINE_string("out", None, "Output .msgpack file.", flag_values=values)
    flags.DEFINE_integer("num_frames", 16, "Clip length the model is built for.", flag_values=values)
    flags.DEFINE_integer("num_classes", 101, "Classifier size (freshly initialised).", flag_values=values)
    flags.DEFINE_integer("image_size", 224, "Clip height and width the model is built for.", flag_values=values)
    flags.DEFINE_integer("seed", 0, "Initialisation of the layers not converted.", flag_values=values)
    flags.DEFINE_boolean("strict", False, "Fail if a state dict key is left unused.", flag_values=values)
    flags.mark_flags_as_required(["model", "out"], flag_values=values)
    flags.mark_flags_as_mutual_exclusive(["torch_weights", "torchvision"], required=True, flag_values=values)


def main(argv: Sequence[str], values: flags.FlagValues = flags.FLAGS) -> int:
    """Writes ``--model``'s variables initialised from ImageNet weights; 2 and a message on bad input."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        _parse(values.model)  # fail on a model without ImageNet counterpart before loading anything
        source_name = values.torch_weights or f"torchvision {values.torchvision}"
        state = (
            load_torch_state_dict(values.torch_weights)
            if values.torch_weights
            else torchvision_state_dict(values.torchvision)
        )
        model = models.create(values.model, num_classes=values.num_classes)
        clip_shape = (1, values.num_frames, values.image_size, values.image_size, 3)
        variables = models.init_variables(model, clip_shape, values.seed)
        result = convert_state_dict(values.model, state, variables, strict=values.strict)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_variables(values.out, result.variables)
    total = sum(int(np.size(x)) for x in jax.tree.leaves(result.variables.get("params", {})))
    print(f"{values.model}: moved {result.n:,} parameter values of {total:,} from {source_name}")
    kept = [k for k in normalize_keys(state) if not k.endswith("num_batches_tracked")]
    if result.unused:
        print(
            f"unused state dict keys: {len(result.unused)} of {len(kept)}: "
            + ", ".join(summarize_keys(result.unused, kept))
        )
    else:
        print("unused state dict keys: none")
    print(f"wrote {values.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
