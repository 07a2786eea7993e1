"""What the command-line programs print: the project's own lines first.

A command that starts absl logging (``main``) imports this module before JAX, TensorFlow or orbax
load. TensorFlow's C++ banners
(oneDNN, CPU features, absl's pre-init notice) are silenced through its environment variables, and
libraries' INFO records (JAX probing for a TPU, orbax's notes on every save) are kept off the
console; their warnings and errors still show, and ``--verbosity=1`` (absl's flag) shows them all.
An environment variable the user set is left as it is.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines
# TensorFlow (only clu's TensorBoard writer and tensorflow-datasets use it here) announces its oneDNN ops
# through absl's C++ log, which ignores TF_CPP_MIN_LOG_LEVEL on Intel CPUs; no TensorFlow op computes
# anything of the model, so they are switched off rather than announced.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import logging as absl_logging  # noqa: E402

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class ProjectFirst(logging.Filter):
    """Passes the project's records, and other libraries' warnings and errors (all at ``-v 1``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            record.levelno >= logging.WARNING
            or record.pathname.startswith(PACKAGE_DIR)
            or absl_logging.get_verbosity() >= absl_logging.DEBUG
        )


if not any(isinstance(f, ProjectFirst) for f in absl_logging.get_absl_handler().filters):
    absl_logging.get_absl_handler().addFilter(ProjectFirst())
