"""Test set-up: two host CPU devices, and a compilation cache shared by the tests of a run."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAG = "--xla_force_host_platform_device_count=2"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
# Each train_and_evaluate call builds fresh step functions; a per-run cache spares recompiling them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="semicnn_jax_tests_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# torchvision's import pulls in triton, which segfaults if TensorFlow (loaded by clu's TensorBoard
# writer and by tensorflow-datasets) was imported first; importing it first avoids that.
import torchvision  # noqa: E402,F401
