"""torchvision ImageNet weights into the zoo: logits, features, counts, errors, files and the command.

torchvision models are randomly initialised (nothing is downloaded), with random BatchNorm statistics
and affine parameters, in eval mode. Variables templates come from ``jax.eval_shape`` of each model's
init, numpy zeros (noise where an initialisation must survive): random Flax init of the full-size
models costs tens of seconds on CPU. ResNets run eagerly (their op shapes repeat across depths, so
the compiled kernels are shared); the other models are jitted with XLA's backend optimisations off.
"""

import functools
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from absl import flags
from commands import run_command
from flax import traverse_util

from semicnn_jax import convert, models, resnet

ARCHS = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169")
PRETRAINED = {
    "semi_vgg16": 5_275_456,
    "semi_resnet18": 387_648,
    "semi_resnet34": 757_056,
    "semi_resnet50": 884_800,
    "semi_resnet101": 884_800,
    "semi_resnet152": 1_444_928,
    "semi_densenet121": 762_816,
    "semi_densenet169": 762_816,
}
# Frames per test clip: enough to survive each semi model's temporal and 2x2x2 pools.
SEMI_FRAMES = {"vgg": 8, "resnet": 2, "densenet": 8}
SIZE = 64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's CPU thread pool is 10-50x slower on a shared 2-core machine than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _family(arch):
    return arch.rstrip("0123456789")


@functools.lru_cache(maxsize=None)
def _torch_model(arch):
    """torchvision ``arch`` in eval mode: random weights, biases and BatchNorm affine parameters, and
    random BatchNorm statistics near those of random images (so activations stay O(1) at any depth)."""
    torch.manual_seed(ARCHS.index(arch))
    net = getattr(torchvision.models, arch)(weights=None)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.momentum = None  # running statistics: the plain average over the batches seen
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.05)  # torchvision initialises them to 0
        if norms:
            net.train()(torch.randn(4, 3, SIZE, SIZE))
            for m in norms:
                m.running_mean.add_(0.1 * torch.randn_like(m.running_mean) * m.running_var.sqrt())
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.7, 1.3))
                m.momentum = 0.1
    return net.eval()


@functools.lru_cache(maxsize=None)
def _state_dict(arch):
    return {k: v.numpy() for k, v in _torch_model(arch).state_dict().items()}


def _template(name, frames, num_classes=1000):
    """Variables of ``name`` for [1, frames, SIZE, SIZE, 3] clips, numpy zeros."""
    model = models.create(name, num_classes=num_classes)
    tracer = models.create(name, num_classes=num_classes, lowering="3d")  # same shapes, traces faster
    shapes = jax.eval_shape(lambda: tracer.init(jax.random.key(0), jnp.zeros((1, frames, SIZE, SIZE, 3)), train=False))
    return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _noise(tree, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.normal(0, 0.05, np.shape(a)).astype(np.float32), tree)


def _run(fn, *args):
    """``jax.jit(fn)(*args)``, compiled with XLA's backend optimisations off (compile time dominates)."""
    compiled = jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    return jax.device_get(compiled(*args))


def _logits(name, model, variables, clip):
    """Eager for ResNets, whose op shapes repeat across depths (cached kernels); jitted otherwise."""
    if name.startswith("resnet"):
        return np.asarray(model.apply(variables, clip, train=False))
    return _run(lambda v, x: model.apply(v, x, train=False), variables, clip)


def _clip(frames, seed=0):
    return np.random.default_rng(seed).standard_normal((1, frames, SIZE, SIZE, 3)).astype(np.float32)


def _frames_to_torch(clip):
    """[1, T, H, W, 3] -> [T, 3, H, W]: each frame an image of a batch."""
    return torch.from_numpy(np.ascontiguousarray(clip[0].transpose(0, 3, 1, 2)))


def _rel_err(got, want):
    """max |got - want| / max |want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _size(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------------
# 2D models.


@pytest.mark.parametrize("arch", ARCHS)
def test_2d_model_gives_torchvision_logits(arch):
    model, variables = _template(f"{arch}_2d", frames=1)
    new, n = convert.from_torchvision(f"{arch}_2d", _state_dict(arch), variables, strict=True)
    assert n == _size(new["params"])
    clip = _clip(1)
    got = _logits(f"{arch}_2d", model, new, clip)
    with torch.no_grad():
        want = _torch_model(arch)(_frames_to_torch(clip)).numpy()
    err = _rel_err(got, want)
    print(
        f"{arch}_2d: max |logit error| = {np.max(np.abs(np.asarray(got) - want)):.3g}, "
        f"relative to max |logit| = {err:.3g}"
    )
    assert err < 1e-4


@pytest.mark.parametrize("arch", ("vgg16", "resnet18", "densenet121"))
def test_2d_inflation_and_other_classifier(arch):
    """The first kernel is repeated over T frames / T; a 10-class classifier keeps its init."""
    name, frames, family = f"{arch}_2d", 4, _family(arch)
    first, classifier, prefix = {
        "vgg": ("conv1_1", "fc8", "classifier.6"),
        "resnet": ("conv1", "fc", "fc"),
        "densenet": ("conv0", "classifier", "classifier"),
    }[family]
    if family == "vgg":  # only the layers concerned: converting FC6 and FC7 costs seconds
        variables = {
            "params": {
                "conv1_1": {
                    "kernel": np.zeros((1, 3, 3, 3 * frames, 64), np.float32),
                    "bias": np.zeros(64, np.float32),
                },
                "fc8": {"kernel": np.zeros((4096, 10), np.float32), "bias": np.zeros(10, np.float32)},
            }
        }
    else:
        _, variables = _template(name, frames, num_classes=10)
    variables["params"][classifier] = _noise(variables["params"][classifier])
    result = convert.convert_state_dict(name, _state_dict(arch), variables)
    new = result.variables
    assert {f"{prefix}.bias", f"{prefix}.weight"} <= set(result.unused)
    if family != "vgg":
        assert sorted(result.unused) == [f"{prefix}.bias", f"{prefix}.weight"]
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(new["params"][classifier][leaf], variables["params"][classifier][leaf])
    assert result.n == _size(new["params"]) - _size(new["params"][classifier])
    mask = convert.pretrained_mask(name, new["params"])
    assert not any(jax.tree.leaves(mask[classifier])) and all(
        v for k, sub in mask.items() if k != classifier for v in jax.tree.leaves(sub)
    )
    key = (
        f"features.{first}.weight"
        if family == "densenet"
        else ("features.0.weight" if family == "vgg" else "conv1.weight")
    )
    kernel = _state_dict(arch)[key].transpose(2, 3, 1, 0)[None]  # [1, kh, kw, 3, cout]
    got = np.asarray(new["params"][first]["kernel"])
    assert got.shape[3] == 3 * frames
    for t in range(frames):  # frame-major channels, like layers.frames_to_channels
        np.testing.assert_allclose(got[..., 3 * t : 3 * t + 3, :], kernel / frames, rtol=1e-6)
    with pytest.raises(ValueError, match="left unused"):
        convert.from_torchvision(name, _state_dict(arch), variables, strict=True)


def test_2d_static_clip_of_t_frames_gives_torchvision_logits():
    """Inflation: T copies of a frame give torchvision's logits of that frame."""
    model, variables = _template("resnet18_2d", 4)
    new, _ = convert.from_torchvision("resnet18_2d", _state_dict("resnet18"), variables, strict=True)
    frame = _clip(1, seed=3)
    got = _logits("resnet18_2d", model, new, np.repeat(frame, 4, axis=1))
    with torch.no_grad():
        want = _torch_model("resnet18")(_frames_to_torch(frame)).numpy()
    assert _rel_err(got, want) < 1e-4


# ----------------------------------------------------------------------------------------------------
# Semi models.


def _torch_spatial(arch, frames):
    """torchvision's per-frame features at the end of the semi model's spatial stage, [T, H, W, C]."""
    net, family = _torch_model(arch), _family(arch)
    x = frames
    with torch.no_grad():
        if family == "vgg":  # conv1_1 ... conv4_2 + ReLU (features[:21]), then the 2x2 max-pool
            x = torch.nn.functional.max_pool2d(net.features[:21](x), 2, 2)
        elif family == "resnet":
            ss1 = resnet.SEMI_LAYOUTS[int(arch[len("resnet") :])][0][1]  # layer2 blocks in the spatial stage
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            x = net.layer2[:ss1](net.layer1(x))
            x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
        else:  # stem, denseblock1, transition1, six layers of denseblock2, ReLU, 2x2 average pool
            f = net.features
            x = f.transition1(f.denseblock1(f.pool0(f.relu0(f.norm0(f.conv0(x))))))
            feats = [x]
            for layer in list(f.denseblock2.children())[:6]:
                feats.append(layer(feats))
            x = torch.nn.functional.avg_pool2d(torch.relu(torch.cat(feats, 1)), 2, 2)
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_semi_model_spatial_stage_is_torchvision(arch, caplog):
    name, frames = f"semi_{arch}", SEMI_FRAMES[_family(arch)]
    model, variables = _template(name, frames)
    with caplog.at_level(logging.INFO, logger="semicnn_jax.convert"):
        new, n = convert.from_torchvision(name, _state_dict(arch), variables)
    assert n == PRETRAINED[name]
    assert any("left unused" in r.getMessage() for r in caplog.records)
    mask = convert.pretrained_mask(name, new["params"])
    assert sum(int(np.size(p)) for p, m in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(mask)) if m) == n
    # The mask marks exactly the parameters that changed (the template is zeros).
    changed = jax.tree.map(lambda a: bool(np.any(np.asarray(a) != 0)), new["params"])
    assert jax.tree.leaves(changed) == jax.tree.leaves(mask)

    clip = _clip(frames, seed=1)
    # Only the spatial features are returned: XLA drops the later stages.
    got = _run(lambda v, x: model.apply(v, x, train=False, return_features=True)[1]["spatial"], new, clip)[0]
    want = _torch_spatial(arch, _frames_to_torch(clip))
    assert got.shape == want.shape
    err = _rel_err(got, want)
    print(f"{name}: spatial features {got.shape}, relative to max |feature| = {err:.3g}")
    assert err < 1e-4
    with pytest.raises(ValueError, match="left unused"):
        convert.from_torchvision(name, _state_dict(arch), variables, strict=True)


# ----------------------------------------------------------------------------------------------------
# Errors, key styles.


def test_wrong_architecture_missing_key_and_wrong_shape_raise():
    _, variables = _template("resnet18_2d", 1)
    with pytest.raises(ValueError, match=r"'layer1\.2\.conv1\.weight' \(shape \(64, 64, 3, 3\)\) does not exist"):
        convert.from_torchvision("resnet18_2d", _state_dict("resnet34"), variables)
    with pytest.raises(
        ValueError,
        match=r"'layer1\.0\.conv1\.weight' has shape \(64, 64, 1, 1\), "
        r"torchvision resnet18 has \(64, 64, 3, 3\)",
    ):
        convert.from_torchvision("resnet18_2d", _state_dict("resnet50"), variables)
    missing = dict(_state_dict("resnet18"))
    del missing["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"no key 'layer1\.0\.bn1\.running_var' \(expected shape \(64,\)\)"):
        convert.from_torchvision("resnet18_2d", missing, variables)
    wrong = dict(_state_dict("resnet18"), **{"conv1.weight": np.zeros((64, 3, 5, 5), np.float32)})
    with pytest.raises(
        ValueError,
        match=r"'conv1\.weight' has shape \(64, 3, 5, 5\), torchvision resnet18 "
        r"has \(64, 3, 7, 7\)",
    ):
        convert.from_torchvision("semi_resnet18", wrong, variables)
    # Variables of another model than the name says (one block more in layer1).
    _, semi = _template("semi_resnet18", 2)
    for collection in ("params", "batch_stats"):
        semi[collection]["layer1_2"] = semi[collection]["layer1_1"]
    with pytest.raises(ValueError, match=r"layer1_2/.* maps to 'layer1\.2\..*', which torchvision resnet18 lacks"):
        convert.from_torchvision("semi_resnet18", _state_dict("resnet18"), semi)
    # A narrower model: shapes do not fit.
    variables["params"]["conv1"]["kernel"] = jax.ShapeDtypeStruct((1, 7, 7, 3, 32), jnp.float32)
    with pytest.raises(
        ValueError,
        match=r"'conv1\.weight' of shape \(64, 3, 7, 7\) .* does not fit "
        r"params/conv1/kernel \(shape \(1, 7, 7, 3, 32\)\)",
    ):
        convert.from_torchvision("resnet18_2d", _state_dict("resnet18"), variables)


def test_variables_of_another_model_raise():
    foreign = {"params": {"temporal_conv": {"kernel": np.zeros((3, 1, 1, 512, 512), np.float32)}}}
    with pytest.raises(
        ValueError,
        match=r"params/temporal_conv/kernel \(shape \(3, 1, 1, 512, 512\)\) has no "
        r"counterpart in torchvision vgg16",
    ):
        convert.from_torchvision("vgg16_2d", _state_dict("vgg16"), foreign)
    with pytest.raises(ValueError, match="nothing of the state dict fits"):
        convert.from_torchvision("semi_vgg16", _state_dict("vgg16"), foreign)


def test_semi_densenet_reading_b_pretrained_count():
    """Reading (b)'s spatial transition (BN-ReLU-conv) is not ImageNet's: the count stays 762,816."""
    model = models.create("semi_densenet121", reading="b")
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, SIZE, SIZE, 3))))
    mask = convert.pretrained_mask("semi_densenet121", shapes["params"])
    assert "spatial_transition" in mask and not any(jax.tree.leaves(mask["spatial_transition"]))
    assert (
        sum(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(shapes["params"]), jax.tree.leaves(mask)) if m)
        == PRETRAINED["semi_densenet121"]
    )


@pytest.mark.parametrize("name", ("resnet18_3d", "semi_resnet18_3d", "c3d", "densenet121_3d"))
def test_models_without_imagenet_counterpart_raise(name):
    with pytest.raises(ValueError, match="no ImageNet counterpart|unknown model"):
        convert.from_torchvision(name, _state_dict("resnet18"), {})
    with pytest.raises(ValueError):
        convert.pretrained_mask(name, {})


def test_prefix_and_old_densenet_keys_accepted_and_input_untouched():
    _, variables = _template("semi_densenet121", 8)
    before = traverse_util.flatten_dict(variables)
    old_style = {}
    for key, value in _state_dict("densenet121").items():  # torchvision's download files: norm.1, conv.2 ...
        key = key.replace("norm1.", "norm.1.").replace("conv1.", "conv.1.") if "denselayer" in key else key
        key = key.replace("norm2.", "norm.2.").replace("conv2.", "conv.2.") if "denselayer" in key else key
        old_style["module." + key] = torch.from_numpy(value)
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in old_style
    new, n = convert.from_torchvision("semi_densenet121", old_style, variables)
    assert n == PRETRAINED["semi_densenet121"]
    ref, _ = convert.from_torchvision("semi_densenet121", _state_dict("densenet121"), variables)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    after = traverse_util.flatten_dict(variables)
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert not np.any(np.asarray(variables["params"]["conv0"]["kernel"]))


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_is_torchvision_state_dict(arch):
    want = {k: v.shape for k, v in _state_dict(arch).items() if not k.endswith("num_batches_tracked")}
    assert convert._reference(arch) == want


def test_summarize_keys():
    keys = ["a.0.w", "a.1.w", "a.1.b", "b.w", "c.0.w", "c.1.w"]
    assert convert.summarize_keys(["a.1.w", "a.1.b", "c.0.w", "c.1.w"], keys) == ["a.1.*", "c.*"]
    assert convert.summarize_keys(["a.1.w"], keys) == ["a.1.w"]


# ----------------------------------------------------------------------------------------------------
# Files and the command.


def test_save_load_round_trip_and_mismatches(tmp_path):
    model, variables = _template("resnet18_2d", 1)
    new, _ = convert.from_torchvision("resnet18_2d", _state_dict("resnet18"), variables)
    path = tmp_path / "sub" / "resnet18_2d.msgpack"
    convert.save_variables(path, new)
    loaded = convert.load_variables(path, variables)
    assert jax.tree.structure(loaded) == jax.tree.structure(new)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(new)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    clip = _clip(1, seed=2)
    np.testing.assert_array_equal(_logits("resnet18_2d", model, loaded, clip), _logits("resnet18_2d", model, new, clip))
    untyped = convert.load_variables(path)
    assert jax.tree.structure(untyped) == jax.tree.structure(new)

    other_classes = traverse_util.flatten_dict(variables)
    other_classes[("params", "fc", "bias")] = jax.ShapeDtypeStruct((10,), jnp.float32)
    with pytest.raises(ValueError, match=r"params/fc/bias has shape \(1000,\), the model has \(10,\)"):
        convert.load_variables(path, traverse_util.unflatten_dict(other_classes))
    deeper = dict(other_classes)
    deeper[("params", "fc", "bias")] = variables["params"]["fc"]["bias"]
    deeper[("params", "layer1_2", "bn1", "bias")] = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match=r"no params/layer1_2/bn1/bias \(the model has shape \(64,\)\)"):
        convert.load_variables(path, traverse_util.unflatten_dict(deeper))
    fewer = traverse_util.flatten_dict(variables)
    del fewer[("batch_stats", "layer1_1", "bn2", "var")]
    with pytest.raises(ValueError, match=r"batch_stats/layer1_1/bn2/var \(shape \(64,\)\) is not in the model"):
        convert.load_variables(path, traverse_util.unflatten_dict(fewer))


def test_torchvision_weights_api_is_used(monkeypatch):
    calls = []

    class Weights:
        def get_state_dict(self, progress):
            calls.append(progress)
            return {"fc.bias": torch.zeros(1000)}

    monkeypatch.setattr(
        torchvision.models,
        "get_model_weights",
        lambda name: {"DEFAULT": Weights(), "IMAGENET1K_V1": Weights()} if name == "resnet18" else None,
    )
    assert set(convert.torchvision_state_dict("resnet18")) == {"fc.bias"}
    assert set(convert.torchvision_state_dict("resnet18:IMAGENET1K_V1")) == {"fc.bias"}
    assert len(calls) == 2


def test_command_errors(tmp_path, capsys):
    code = run_command(
        convert, ["--model", "c3d", "--torch_weights", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "c3d has no ImageNet counterpart" in capsys.readouterr().err
    code = run_command(
        convert,
        ["--model", "semi_resnet18", "--torch_weights", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")],
    )
    assert code == 2 and "missing.pth" in capsys.readouterr().err
    with pytest.raises(flags.IllegalFlagValueError, match="torch_weights"):  # exactly one weights source
        run_command(convert, ["--model", "semi_resnet18", "--out", str(tmp_path / "o")])


@pytest.fixture(autouse=True, scope="module")
def _command(request, tmp_path_factory, _one_torch_thread):
    """Starts the command of :func:`test_command_end_to_end` when the module starts, if that test is
    selected: it spends ~10 s mostly compiling the random init, alongside the tests in this process."""
    if not any(item.name == "test_command_end_to_end" for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("command")
    pth, out = tmp / "resnet18.pth", tmp / "weights" / "semi_resnet18_imagenet.msgpack"
    torch.save(_torch_model("resnet18").state_dict(), pth)
    # XLA's default CPU optimisation level makes compiling the random init take ~20 s; 1 takes ~5 s.
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1"
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=flags.strip(),
    )
    with open(tmp / "stdout", "w") as stdout, open(tmp / "stderr", "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "semicnn_jax.convert",
                "--model",
                "semi_resnet18",
                "--torch_weights",
                str(pth),
                "--out",
                str(out),
                "--num_frames",
                "4",
                "--image_size",
                "64",
            ],
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=REPO,
        )
    yield proc, tmp, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_command_end_to_end(_command):
    proc, tmp, out = _command
    proc.wait(timeout=300)
    stdout, stderr = (tmp / "stdout").read_text(), (tmp / "stderr").read_text()
    assert proc.returncode == 0, stderr
    assert "moved 387,648 parameter values" in stdout
    assert "unused state dict keys: 62 of 102: layer2.1.*, layer3.*, layer4.*, fc.*" in stdout

    _, target = _template("semi_resnet18", 2, num_classes=101)
    loaded = convert.load_variables(out, target)
    kernel = _state_dict("resnet18")["layer1.0.conv1.weight"]
    np.testing.assert_array_equal(loaded["params"]["layer1_0"]["conv1"]["kernel"], kernel.transpose(2, 3, 1, 0)[None])
    np.testing.assert_array_equal(loaded["batch_stats"]["bn1"]["var"], _state_dict("resnet18")["bn1.running_var"])
    assert np.any(np.asarray(loaded["params"]["layer4_1"]["conv2"]["kernel"]))  # fresh init, not zeros
