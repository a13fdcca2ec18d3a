"""The server's commands: `broker serve`, `broker check-config` and
`broker tokens`, which work on this host's configuration and database.

They join the client's `broker` command through the entry point group
`rotest_broker.commands` (so neither side imports the other), and run alone
as `python -m broker`. Each imports the server's modules only when it runs,
so a client installed without the server (`pip install rotest-broker`, no
`[server]`) still lists them and says what to install.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from broker import command_line as output
from broker import token_commands
from broker.command_line import EXIT_OK, EXIT_USAGE, UsageError, local_command

SERVER_EXTRA = "pip install 'rotest-broker[server]'"
# The modules of the server's own dependencies (the `server` extra).
SERVER_MODULES = frozenset({"psycopg2", "grpc_health", "grpc_reflection", "jwt", "cryptography"})


def cmd_serve(args: argparse.Namespace) -> int:
    from broker.api.server import serve_forever

    return serve_forever(args.config, address=args.address, database_url=args.database)


def cmd_check_config(args: argparse.Namespace) -> int:
    from broker.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.config}: OK")
    print(output.details(_flatten(config)))
    return EXIT_OK


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            pairs += _flatten(value, f"{prefix}{field.name}.")
        elif isinstance(value, tuple):
            pairs.append((f"{prefix}{field.name}", ", ".join(map(str, value))))
        else:
            pairs.append((f"{prefix}{field.name}", str(value)))
    return pairs


def _needs_the_server(handler):
    """Runs a server command, turning a missing server package into a
    usage error that says what to install."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ModuleNotFoundError as error:
            if (error.name or "").partition(".")[0] not in SERVER_MODULES:
                raise
            raise UsageError(
                f"`broker {args.command}` needs the server's packages ({error}): {SERVER_EXTRA}"
            ) from error

    return run


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds the server's commands to a `broker` parser's subcommands."""
    serve = local_command(
        commands, "serve", _needs_the_server(cmd_serve), "run a broker until SIGTERM or SIGINT"
    )
    serve.add_argument("--config", default="rotest.yml", help="default %(default)s")
    serve.add_argument("--address", help="HOST:PORT to listen on, overriding the config")
    serve.add_argument("--database", help="database URL, overriding the config")

    check = local_command(
        commands,
        "check-config",
        _needs_the_server(cmd_check_config),
        "validate a configuration file",
    )
    check.add_argument("--config", default="rotest.yml", help="default %(default)s")
    token_commands.add_commands(commands)


def main(argv: list[str] | None = None) -> int:
    """`python -m broker`: the server's commands alone."""
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return args.local(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return output.EXIT_INTERRUPTED
