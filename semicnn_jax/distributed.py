"""One run over many processes: ``jax.distributed`` start-up, and a SIGTERM stop every process takes at
the same step.

    # process i of N (one per host; on one host for tests), the same command otherwise:
    python -m semicnn_jax.main --coordinator_address=host0:1234 --num_processes=N --process_id=i ...
    # SLURM, Open MPI, Kubernetes/cloud TPU: the cluster says who is who
    python -m semicnn_jax.main --distributed=auto ...

Collectives run over NCCL between GPUs and gloo between CPU processes. A process that dies stops
sending heartbeats; the coordination service then ends every other process with an error after
``--heartbeat_timeout_seconds`` (JAX's default: 100 s), so nothing waits forever in a collective.
"""

from __future__ import annotations

import logging as std_logging
import signal

import jax
import numpy as np
from absl import flags, logging

from semicnn_jax.exits import ConfigError

MODES = ("none", "auto")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """``main``'s multi-process flags (none given: one process, as always)."""
    flags.DEFINE_enum(
        "distributed",
        "none",
        MODES,
        "auto: jax.distributed.initialize() detects the cluster (SLURM, Open MPI, Kubernetes); "
        "none: one process unless --coordinator_address is given.",
        flag_values=values,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0's coordination service (all processes).",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Processes in the run (with --coordinator_address).", flag_values=values
    )
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.", flag_values=values)
    flags.DEFINE_integer(
        "heartbeat_timeout_seconds",
        100,
        "A process silent this long is declared dead and every other process stops with an error.",
        flag_values=values,
    )


def initialize(values: flags.FlagValues = flags.FLAGS) -> None:
    """Joins the run's processes before any other JAX call (gloo collectives between CPU processes)."""
    explicit = [values.coordinator_address, values.num_processes, values.process_id]
    if values.distributed == "none" and all(v is None for v in explicit):
        return
    if values.distributed == "none" and any(v is None for v in explicit):
        raise ConfigError(
            "--coordinator_address, --num_processes and --process_id go together (or use "
            "--distributed=auto where the cluster says who is who)"
        )
    if values.heartbeat_timeout_seconds < 1:
        raise ConfigError(f"--heartbeat_timeout_seconds={values.heartbeat_timeout_seconds} must be >= 1")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes (GPUs use NCCL)
    jax.distributed.initialize(
        values.coordinator_address,
        values.num_processes,
        values.process_id,
        heartbeat_timeout_seconds=values.heartbeat_timeout_seconds,
    )
    logging.get_absl_handler().addFilter(ProcessPrefix(jax.process_index()))
    logging.info("joined the run as process %d of %d", jax.process_index(), jax.process_count())


class ProcessPrefix(std_logging.Filter):
    """Starts each console line of a multi-process run with the process it comes from."""

    def __init__(self, index: int):
        super().__init__()
        self.prefix = f"[process {index}] "

    def filter(self, record: std_logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class StopSignal:
    """SIGTERM to any process stops every process at the same step: each process notes the signal
    locally; ``requested()``, called by every process after each step, all-gathers the notes (one tiny
    collective per step, only when there are several processes)."""

    def __init__(self):
        self.local = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame):
        logging.warning("SIGTERM: saving a checkpoint before exiting")
        self.local = True

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self.local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(self.local))))

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
