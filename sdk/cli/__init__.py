"""The `broker` command: run a broker, and administer one over gRPC (kinds,
resources, leases, events) like any other client.

The commands that run on the broker's own host (`serve`, `check-config`,
`tokens`) are the server's, `broker.commands`, joined through the entry
point group `rotest_broker.commands`.

Every remote command goes through `sdk.BrokerClient`, so the command line
sees exactly what programs see. `--set` and `--where` values are typed from
the kind's fields as `ListKinds` describes them. Exit status: 0 done,
1 the broker refused, 2 bad usage or configuration, 3 the broker is
unreachable, 130 interrupted (Ctrl-C; a waiting acquire leaves the queue).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import sys
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from broker.command_line import (
    COMMANDS_GROUP,
    EXIT_BROKER,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
)
from broker.v1 import event_pb2, event_service_pb2, lease_pb2
from sdk import TlsOptions
from sdk.channel import addresses_of
from sdk.cli import output
from sdk.cli.values import kind_field_types, parse_set, parse_where
from sdk.client import BrokerClient
from sdk.config import ClientConfigError, load_client_config
from sdk.errors import BrokerError, UnavailableError
from sdk.requirements import to_constraints
from sdk.waiting import Waiting, wait_for_grant

LEASE_STATES = {
    "active": lease_pb2.LEASE_STATE_ACTIVE,
    "released": lease_pb2.LEASE_STATE_RELEASED,
    "expired": lease_pb2.LEASE_STATE_EXPIRED,
    "revoked": lease_pb2.LEASE_STATE_REVOKED,
}

EVENT_TYPES = {
    name.removeprefix("EVENT_TYPE_").lower(): number
    for name, number in event_pb2.EventType.items()
    if number != event_pb2.EVENT_TYPE_UNSPECIFIED
}

# --------------------------------------------------------------- commands


def cmd_whoami(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.caller_text(client.whoami()))
    return 0


def cmd_kinds(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.kinds_table(client.list_kinds()))
    return EXIT_OK


def cmd_resources_list(client: BrokerClient, args: argparse.Namespace) -> int:
    types = kind_field_types(client, args.kind) if args.kind else {}
    where = parse_where(args.where, types)
    print(output.resources_table(client.list_resources(args.kind or "", where)))
    return EXIT_OK


def cmd_resources_add(client: BrokerClient, args: argparse.Namespace) -> int:
    fields = parse_set(args.set, kind_field_types(client, args.kind))
    resource = client.create_resource(
        args.kind,
        args.name,
        fields,
        comment=args.comment,
        group=args.group,
        is_usable=args.usable,
        reserved_for=args.reserved_for,
    )
    print(output.resource_details(resource))
    return EXIT_OK


def cmd_resources_show(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.resource_details(client.get_resource(args.name)))
    return EXIT_OK


def cmd_resources_update(client: BrokerClient, args: argparse.Namespace) -> int:
    fields = None
    if args.set:
        kind = client.get_resource(args.name).kind
        fields = parse_set(args.set, kind_field_types(client, kind))
    resource = client.update_resource(
        args.name,
        fields=fields,
        is_usable=args.usable,
        comment=args.comment,
        group=args.group,
        reserved_for=args.reserved_for,
        reserved_until=(
            None if args.reserved_until is None else args.reserved_until.ToNanoseconds() / 1e9
        ),
        reservation_reason=args.reservation_reason,
        etag=args.etag,
    )
    print(output.resource_details(resource))
    return EXIT_OK


def cmd_resources_out_of_service(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.resource_details(client.set_out_of_service(args.name, args.reason)))
    return EXIT_OK


def cmd_resources_return(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.resource_details(client.return_to_service(args.name)))
    return EXIT_OK


def cmd_resources_delete(client: BrokerClient, args: argparse.Namespace) -> int:
    client.delete_resource(args.name, etag=args.etag)
    print(f"deleted {args.name}")
    return EXIT_OK


def cmd_events(client: BrokerClient, args: argparse.Namespace) -> int:
    """Prints the events after `--after`, one line each, then with `--follow`
    each new one as it happens, until Ctrl-C."""
    event_filter = event_service_pb2.EventFilter(
        resource=args.resource,
        kind=args.kind,
        lease_id=args.lease,
        actor=args.actor,
        types=[EVENT_TYPES[name] for name in args.type],
        start_time=args.since,
        end_time=args.until,
    )
    if args.follow:
        events = client.watch_events(event_filter, args.after)
    else:
        events = client.list_events(event_filter, args.after)
    for event in events:
        print(output.event_line(event), flush=True)
    return EXIT_OK


def cmd_shell(client: BrokerClient, args: argparse.Namespace) -> int:
    from sdk import shell

    shell.shell(client, client.config)
    shell.release_all()
    return EXIT_OK


def cmd_stats(client: BrokerClient, args: argparse.Namespace) -> int:
    stats = client.usage_stats(
        args.resource,
        args.kind,
        args.since.ToDatetime(datetime.UTC) if args.since else None,
        args.until.ToDatetime(datetime.UTC) if args.until else None,
        by_kind=args.by_kind,
    )
    print(output.usage_table(stats))
    return EXIT_OK


def time_arg(text: str) -> timestamp_pb2.Timestamp:
    """An ISO 8601 time (local unless it names its zone)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2026-05-01T09:30"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def non_negative_int(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return value


def cmd_leases_list(client: BrokerClient, args: argparse.Namespace) -> int:
    state = LEASE_STATES[args.state] if args.state else None
    print(
        output.leases_table(
            client.list_leases(state, args.holder, args.resource, principal=args.principal)
        )
    )
    return EXIT_OK


def cmd_leases_show(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.lease_details(client.get_lease(args.lease_id)))
    return EXIT_OK


def cmd_leases_revoke(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.lease_details(client.revoke_lease(args.lease_id, args.reason)))
    return EXIT_OK


def cmd_leases_acquire(client: BrokerClient, args: argparse.Namespace) -> int:
    """Prints the grant; while waiting for it, prints each change of the
    request's place in the queue to stderr, so stdout holds only the lease."""
    where = parse_where(args.where, kind_field_types(client, args.kind))
    requirement = lease_pb2.Requirement(
        kind=args.kind, constraints=to_constraints(where), count=args.count, label=args.kind
    )
    if args.wait:
        events = client.watch_acquire(
            [requirement], ttl=args.ttl, max_wait=args.wait, priority=args.priority
        )
        granted = wait_for_grant(events, _print_waiting)
        lease, secret = granted.lease, granted.secret
    else:
        lease, secret = client.acquire([requirement], ttl=args.ttl, priority=args.priority)
    print(output.lease_details(lease, secret))
    print(
        f"\nkeep it with: broker leases renew {lease.lease_id} --secret {secret}"
        f"\nend it with:  broker leases release {lease.lease_id} --secret {secret}"
    )
    return EXIT_OK


def _print_waiting(waiting: Waiting) -> None:
    print(output.waiting_text(waiting), file=sys.stderr, flush=True)


def cmd_queue(client: BrokerClient, args: argparse.Namespace) -> int:
    print(output.waiters_table(client.list_waiters()))
    return EXIT_OK


def cmd_leases_renew(client: BrokerClient, args: argparse.Namespace) -> int:
    lease = client.renew(args.lease_id, args.secret)
    print(f"lease {lease.lease_id} expires {output.local_time(lease.expire_time)}")
    return EXIT_OK


def cmd_leases_release(client: BrokerClient, args: argparse.Namespace) -> int:
    lease = client.release(args.lease_id, args.secret)
    print(f"lease {lease.lease_id} released")
    return EXIT_OK


# ----------------------------------------------------------------- parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument(
        "--target",
        help="the broker's HOST:PORT (env BROKER_TARGET, or the client configuration; "
        "default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="seconds each call may take (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        help="the API token to call with, for a broker with auth on (env BROKER_TOKEN, or "
        "client.token_file)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="call over TLS, checking the broker's certificate against the system's roots "
        "(implied by --ca-file and --cert)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="call over TLS, checking the broker's certificate against this CA (env "
        "BROKER_CA_FILE)",
    )
    parser.add_argument(
        "--cert",
        metavar="PEM",
        help="the client certificate, for a broker with mutual TLS (env BROKER_CERT_FILE)",
    )
    parser.add_argument(
        "--key",
        metavar="PEM",
        help="the client certificate's key (env BROKER_KEY_FILE)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry_point in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        entry_point.load()(commands)
    _remote(commands, "kinds", cmd_kinds, "list the kinds and their fields")
    _remote(commands, "whoami", cmd_whoami, "who the broker takes you to be: name, role, groups")
    _add_resource_commands(commands)
    _add_lease_commands(commands)
    _remote(commands, "queue", cmd_queue, "list the waiting requests in the order they are served")
    _remote(
        commands,
        "shell",
        cmd_shell,
        "Python with a client and the kinds imported: Calculator.lock(name=...) holds one",
    )
    _add_event_command(commands)
    stats = _remote(
        commands,
        "stats",
        cmd_stats,
        "usage per resource or kind: grants, time held, waits, expiries, revokes",
    )
    stats.add_argument("--resource", default="", help="only this resource")
    stats.add_argument("--kind", default="", help="only resources of this kind")
    stats.add_argument("--by-kind", action="store_true", help="one row per kind")
    stats.add_argument("--since", type=time_arg, metavar="TIME", help="from TIME on")
    stats.add_argument("--until", type=time_arg, metavar="TIME", help="before TIME")
    return parser


def _add_event_command(commands: argparse._SubParsersAction) -> None:
    events = _remote(commands, "events", cmd_events, "print the audit trail, one line per event")
    events.add_argument(
        "--follow", action="store_true", help="then print each new event as it happens"
    )
    events.add_argument(
        "--after",
        type=non_negative_int,
        default=0,
        metavar="SEQ",
        help="only events after this sequence (the first number of a line), to resume",
    )
    events.add_argument("--resource", default="", help="only events about this resource")
    events.add_argument("--kind", default="", help="only events about resources of this kind")
    events.add_argument("--lease", default="", metavar="ID", help="only events of this lease")
    events.add_argument("--actor", default="", help="only events made by this actor")
    events.add_argument(
        "--type",
        action="append",
        default=[],
        choices=list(EVENT_TYPES),
        help="only events of this type; repeat for several",
    )
    events.add_argument("--since", type=time_arg, metavar="TIME", help="only events from TIME on")
    events.add_argument("--until", type=time_arg, metavar="TIME", help="only events before TIME")


def _add_resource_commands(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("resources", help="list and administer resources")
    resources = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = _remote(resources, "list", cmd_resources_list, "list resources")
    listing.add_argument("--kind", help="only this kind; needed to filter on its own fields")
    _where_option(listing)

    add = _remote(resources, "add", cmd_resources_add, "add a resource")
    add.add_argument("kind")
    add.add_argument("name")
    _set_option(add)
    add.add_argument("--comment", default="")
    add.add_argument("--group", default="")
    add.add_argument("--unusable", dest="usable", action="store_false", help="out of service")
    add.add_argument("--reserved-for", default="", metavar="HOLDER")

    show = _remote(resources, "show", cmd_resources_show, "show one resource")
    show.add_argument("name")

    update = _remote(resources, "update", cmd_resources_update, "change a resource")
    update.add_argument("name")
    _set_option(update)
    usable = update.add_mutually_exclusive_group()
    usable.add_argument("--usable", dest="usable", action="store_const", const=True)
    usable.add_argument("--unusable", dest="usable", action="store_const", const=False)
    update.add_argument("--comment")
    update.add_argument("--group")
    update.add_argument("--reserved-for", metavar="HOLDER", help="empty: no reservation")
    update.add_argument(
        "--reserved-until", type=time_arg, metavar="TIME", help="when the reservation ends"
    )
    update.add_argument("--reservation-reason", metavar="TEXT")
    _etag_option(update)

    out = _remote(
        resources,
        "out-of-service",
        cmd_resources_out_of_service,
        "take a resource out of service: it is never granted until returned",
    )
    out.add_argument("name")
    out.add_argument("--reason", required=True, help="why, shown to whoever asks for it")

    back = _remote(resources, "return", cmd_resources_return, "put a resource back in service")
    back.add_argument("name")

    delete = _remote(resources, "delete", cmd_resources_delete, "delete a resource")
    delete.add_argument("name")
    _etag_option(delete)


def _add_lease_commands(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("leases", help="list, hold and end leases")
    leases = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = _remote(leases, "list", cmd_leases_list, "list leases, newest first")
    listing.add_argument("--state", choices=list(LEASE_STATES))
    listing.add_argument("--holder", default="")
    listing.add_argument("--resource", default="", help="only leases granted this resource")
    listing.add_argument("--principal", default="", help="only leases held by this principal")

    show = _remote(leases, "show", cmd_leases_show, "show one lease")
    show.add_argument("lease_id", metavar="ID")

    revoke = _remote(leases, "revoke", cmd_leases_revoke, "end someone else's lease")
    revoke.add_argument("lease_id", metavar="ID")
    revoke.add_argument("--reason", required=True, help="recorded with the lease")

    acquire = _remote(leases, "acquire", cmd_leases_acquire, "hold resources from the shell")
    acquire.add_argument("kind")
    _where_option(acquire)
    acquire.add_argument("--count", type=positive_int, default=1)
    acquire.add_argument("--ttl", type=positive_float, metavar="SECONDS")
    acquire.add_argument(
        "--wait",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long in the queue if the resources are held (default: do not wait)",
    )
    acquire.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="place in the queue, -100 to 100, higher first (default %(default)s)",
    )

    for name, handler, help_text in (
        ("renew", cmd_leases_renew, "extend a lease you hold"),
        ("release", cmd_leases_release, "end a lease you hold"),
    ):
        command = _remote(leases, name, handler, help_text)
        command.add_argument("lease_id", metavar="ID")
        command.add_argument("--secret", required=True, help="as printed by acquire")


def _remote(
    commands: argparse._SubParsersAction,
    name: str,
    handler: Callable[[BrokerClient, argparse.Namespace], int],
    help_text: str,
) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(remote=handler)
    return command


def _where_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="only resources whose field has this value; repeat a field for any of several",
    )


def _set_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="a typed field's value"
    )


def _etag_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--etag", default="", help="fail with ABORTED if the resource changed")


# ------------------------------------------------------------------- main


def tls_of(args: argparse.Namespace) -> TlsOptions | bool | None:
    """The TLS options the global options give (None: the configured ones)."""
    if not (args.tls or args.ca_file or args.cert or args.key):
        return None
    try:
        return TlsOptions(args.ca_file or "", args.cert or "", args.key or "")
    except ValueError as error:
        raise UsageError(f"--ca-file/--cert/--key: {error}") from error


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        if hasattr(args, "local"):
            return args.local(args)
        tls = tls_of(args)
        if args.target is not None:
            try:
                addresses_of(args.target)
            except ValueError as error:
                raise UsageError(f"--target: {error}") from error
        try:
            config = load_client_config()
        except ClientConfigError as error:
            raise UsageError(f"the client configuration: {error}") from error
        try:
            # No session: a lease acquired from the command line outlives
            # this process; `broker shell` holds its locks for its lifetime.
            client = BrokerClient(
                args.target,
                timeout=args.timeout,
                session=args.command == "shell",
                token=args.token,
                tls=tls,
                config=config,
            )
        except ValueError as error:
            raise UsageError(str(error)) from error
        with client:
            return args.remote(client, args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as error:
        print(output.error_text(error), file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokerError as error:
        print(output.error_text(error), file=sys.stderr)
        return EXIT_BROKER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
