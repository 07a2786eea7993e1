"""Exit statuses of every command, and the exceptions that map to them.

    0   OK         finished
    1   FAILED     an operational error (disk full, unreadable data, damaged checkpoints, a lost process):
                   one line on stderr says what and what to do; the traceback goes to the log once
    2   USAGE      a flag or config value refused before any work started (the line names it)
    75  PREEMPTED  stopped by SIGTERM after saving a checkpoint (EX_TEMPFAIL): rerun the same command
                   to resume
"""

OK = 0
FAILED = 1
USAGE = 2
PREEMPTED = 75


class ConfigError(ValueError):
    """A config field, flag or dataset setting refused before work starts (exit ``USAGE``)."""


class Preempted(Exception):
    """Raised by ``train.train_and_evaluate`` once the checkpoint of ``step`` is saved after SIGTERM."""

    def __init__(self, step: int):
        super().__init__(f"preempted: stopped at step {step} after saving its checkpoint; "
                         "rerun the same command to resume")
        self.step = step
