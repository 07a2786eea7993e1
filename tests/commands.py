"""Runs a command's ``main`` in this process as its command line would: the command's absl flags,
defined on a fresh ``FlagValues`` (so commands and tests sharing a process never collide), parse
``argv``; a flag error raises ``flags.Error``."""

from absl import flags


def run_command(module, argv: list[str]) -> int:
    values = flags.FlagValues()
    module.define_flags(values)
    rest = values([module.__name__, *argv])
    return module.main(rest, values)
