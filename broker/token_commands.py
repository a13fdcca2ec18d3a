"""`broker tokens`: making, listing and revoking API tokens.

These commands work on the database named by `--config`, with no broker
running (as the first administrator's token must be made before anyone can
call a broker with authentication on), and also while brokers run: they
read the token table on every call they have not verified lately.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from broker import command_line as output
from broker.command_line import UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """Seconds of `90s`, `30m`, `12h`, `30d`, `2w` (a bare number: seconds)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration like 90s, 30m, 12h, 30d or 2w"
        )
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def _refusals(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Prints a refusal of the token rules (a taken name, no such token) as
    the broker's refusals are printed: on stderr, exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from broker.domain.errors import BrokerError

        try:
            return command(args)
        except BrokerError as error:
            print(f"error: {error.message}", file=sys.stderr)
            return 1

    return run


@contextmanager
def _tokens(config_path: str) -> Iterator:
    """The token table of the configuration's database, laid out if new."""
    from broker.config import ConfigError, load_config
    from broker.domain.kinds import KindRegistry
    from broker.domain.tokens import Tokens
    from broker.models.database import DatabaseURLError, bind, close_database, open_database
    from broker.models.schema import SchemaVersionError, create_tables

    try:
        config = load_config(config_path)
        database = open_database(
            config.database.url,
            base_dir=config.base_dir,
            stall_timeout=config.database.stall_timeout,
        )
    except (ConfigError, DatabaseURLError) as error:
        raise UsageError(str(error)) from error
    try:
        bind(database)
        try:
            create_tables(KindRegistry(config.kind_models()).models)
        except SchemaVersionError as error:
            raise UsageError(str(error)) from error
        yield Tokens()
    finally:
        close_database(database)


def _local_actor() -> str:
    """Who made an offline change, as its event records it: the local
    account (not a verified principal: whoever can write the database)."""
    return f"local:{getpass.getuser()}@{socket.gethostname()}"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return output.NONE
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).astimezone()
    return moment.isoformat(timespec="seconds")


@_refusals
def cmd_create(args: argparse.Namespace) -> int:
    with _tokens(args.config) as tokens:
        view, token = tokens.create(
            args.name, args.role, args.group, args.expires, actor=_local_actor()
        )
    print(
        output.details(
            [
                ("name", view.name),
                ("role", view.role.value),
                ("groups", ",".join(view.groups) or output.NONE),
                ("expires", _when(view.expire_time) if view.expire_time else "never"),
            ]
        )
    )
    print("token (shown only now; keep it secret, pass it as --token or BROKER_TOKEN):")
    print(token)
    return 0


@_refusals
def cmd_list(args: argparse.Namespace) -> int:
    import time

    with _tokens(args.config) as tokens:
        views = tokens.list()
    now = time.time()
    print(
        output.table(
            ("NAME", "ROLE", "GROUPS", "STATE", "CREATED", "EXPIRES", "REVOKED"),
            (
                (
                    view.name,
                    view.role.value,
                    ",".join(view.groups) or output.NONE,
                    view.state(now),
                    _when(view.create_time),
                    _when(view.expire_time) if view.expire_time else "never",
                    _when(view.revoke_time),
                )
                for view in views
            ),
        )
    )
    return 0


@_refusals
def cmd_revoke(args: argparse.Namespace) -> int:
    with _tokens(args.config) as tokens:
        view = tokens.revoke(args.name, actor=_local_actor())
    print(
        f"revoked the token of {view.name}; brokers refuse it within their auth.cache_seconds",
        file=sys.stdout,
    )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds `tokens create|list|revoke`."""
    command = output.local_command
    group = commands.add_parser("tokens", help="make, list and revoke API tokens (offline)")
    tokens = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = command(tokens, "create", cmd_create, "make a token; prints it once, last")
    create.add_argument("name", help="the principal the token stands for")
    create.add_argument("--role", required=True, choices=("admin", "user", "viewer"))
    create.add_argument(
        "--group", action="append", default=[], metavar="G", help="a group; repeat for several"
    )
    create.add_argument(
        "--expires", type=duration, metavar="DURATION", help="e.g. 12h, 30d (default: never)"
    )
    listing = command(tokens, "list", cmd_list, "list tokens (never the tokens themselves)")
    revoke = command(tokens, "revoke", cmd_revoke, "revoke a principal's token")
    revoke.add_argument("name")
    for each in (create, listing, revoke):
        each.add_argument("--config", default="rotest.yml", help="default %(default)s")
