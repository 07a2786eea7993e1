"""Trains and evaluates a model of the zoo.

    python -m semicnn_jax.main --workdir=runs/demo --config=experiments/demo.py
    python -m semicnn_jax.main --workdir=runs/semi_vgg16 --config=experiments/semi_vgg16.py \\
        --config.dataset.data_dir=/data/ucf101

Many processes (one per host): the same command with ``--coordinator_address=host0:port
--num_processes=N --process_id=i``, or ``--distributed=auto`` under SLURM/Open MPI/Kubernetes
(``semicnn_jax.distributed``; README "Many machines").

Exit status (``semicnn_jax.exits``): 0 done, 1 failed (one line says what to do), 2 a bad flag or config
field (refused before any work), 75 preempted by SIGTERM after saving a checkpoint (rerun to resume).
"""

# isort: off
from semicnn_jax import console  # noqa: F401  (first: quiets libraries before they load)
# isort: on

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from semicnn_jax import compilation_cache, distributed, exits, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and run.json.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py or path.py:arg).", lock_config=True)
flags.mark_flags_as_required(["workdir", "config"])
distributed.define_flags()


@exits.run
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize(FLAGS)  # before any other JAX call
    compilation_cache.configure()  # before the first compilation
    logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(), jax.local_devices())
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=exits.parse_flags)
