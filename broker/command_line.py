"""What the `broker` command's two sides share: the client's commands
(`sdk.cli`) and the server's (`broker.commands`) print the same plain-text
tables and `key: value` blocks, refuse bad usage the same way, and exit with
the same statuses. It imports nothing of either side."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence

EXIT_OK, EXIT_BROKER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

# How a missing value is shown.
NONE = "-"

# The entry point group through which the server's commands join the client's
# `broker` command (`broker serve`, `broker check-config`, `broker tokens`).
COMMANDS_GROUP = "rotest_broker.commands"


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see."""


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def details(pairs: Iterable[tuple[str, str]]) -> str:
    """`key: value` lines with the values aligned."""
    pairs = list(pairs)
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in pairs)


def local_command(
    commands: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
) -> argparse.ArgumentParser:
    """A command that runs here, calling no broker: `handler(args)` gives
    the exit status."""
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(local=handler)
    return command
