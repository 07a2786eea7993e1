"""Exit statuses of every command, and the exceptions that map to them.

0   OK         finished
1   FAILED     an operational error (disk full, unreadable data, damaged checkpoints, a lost process):
               one line on stderr says what and what to do; the traceback goes to the log once
2   USAGE      a flag or config value refused before any work started (the line names it)
75  PREEMPTED  stopped by SIGTERM after saving a checkpoint (EX_TEMPFAIL): rerun the same command
               to resume
"""

import errno
import functools
import os
import re
import sys
import tempfile
import traceback
from typing import Any, Callable

from absl import flags

OK = 0
FAILED = 1
USAGE = 2
PREEMPTED = 75


class ConfigError(ValueError):
    """A config field, flag or dataset setting refused before work starts (exit ``USAGE``)."""


class Preempted(Exception):
    """Raised by ``train.train_and_evaluate`` once the checkpoint of ``step`` is saved after SIGTERM."""

    def __init__(self, step: int):
        super().__init__(
            f"preempted: stopped at step {step} after saving its checkpoint; rerun the same command to resume"
        )
        self.step = step


class Failure(RuntimeError):
    """An operational failure the user can act on (exit ``FAILED``); the message says what and what to do."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KeyError / ml_collections quote theirs
        text = text[1:-1]
    text = text.replace("\\n", " ").replace("\\'", "'")
    return " ".join(text.split()) or type(error).__name__


def failure_log(trace: str) -> str:
    """Writes a traceback to a file of its own (the console keeps one line); returns the file's path."""
    handle, path = tempfile.mkstemp(prefix="semicnn_jax-failure-", suffix=".log")
    with os.fdopen(handle, "w") as f:
        f.write(trace)
    return path


def status_of(error: BaseException) -> tuple[int, str]:
    """(exit status, the one line to print) for an exception that ended a command."""
    if isinstance(error, Preempted):
        return PREEMPTED, str(error)
    if isinstance(error, ConfigError):
        return USAGE, f"error: {_first_line(error)}"
    line = _first_line(error)
    if isinstance(error, OSError):
        if error.errno == errno.ENOSPC:
            line = (
                f"no space left on the device of {error.filename or 'the workdir'}; free space and rerun the same "
                "command to resume from the last checkpoint"
            )
        elif error.filename and error.strerror:
            line = f"{error.filename}: {error.strerror}"
    elif not isinstance(error, Failure):
        line = f"{type(error).__name__}: {line}"
    return FAILED, f"error: {line}"


def run(main: Callable[[list[str]], Any]) -> Callable[[list[str]], int]:
    """``main`` for ``app.run`` with every failure ending in one line and its status (the traceback, when
    there is one worth reading, goes to a log file the line names)."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> int:
        try:
            main(argv)
            return OK
        except (Preempted, ConfigError, Failure, OSError, RuntimeError, ValueError) as error:
            status, line = status_of(error)
            if status == FAILED and not isinstance(error, Failure):
                line += f" (traceback: {failure_log(traceback.format_exc())})"
            print(line, file=sys.stderr, flush=True)
            return status

    return wrapped


def parse_flags(argv: list[str], values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing with one line and status ``USAGE`` for a bad flag or config override (a
    mistyped ``--config.field`` names the nearest field instead of three chained tracebacks)."""
    try:
        return values(argv)
    except flags.Error as error:
        cause = error.__cause__ or error.__context__
        message = _first_line(cause if isinstance(cause, (AttributeError, KeyError)) else error)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        message = _first_line(error)
    typo = re.search(r'Did you mean "(\S+)" instead of "(\S+)"', message)
    if typo:  # ml_collections' own suggestion for an override of a field that does not exist
        overrides = [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0].endswith("." + typo[2])]
        message = f"{overrides[0] if overrides else typo[2]} is not a config field; did you mean {typo[1]}?"
    print(f"error: {message}\nPass --help to see the flags.", file=sys.stderr)
    sys.exit(USAGE)
