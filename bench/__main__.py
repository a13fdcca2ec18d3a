"""`make bench`: every bench point against real broker subprocesses.

First, the references, measured in the same run so the broker's figures
compare with them as ratios (`bench.compare`):

- ceiling (`bench.ceiling`): bare gRPC plus one conditional UPDATE on
  SQLite per call, with the throughput points' clients (`_ceiling`);
- etcd (`bench.etcd`), where an `etcd` binary is on PATH: its lock with the
  throughput points' clients and the hand-off's layout (`_etcd`); without
  one, a line says it is skipped.

On SQLite, one broker:

1. throughput (`bench.throughput`): uncontended acquire+release cycles at 1,
   4 and 16 clients;
2. hand-off (`bench.handoff`): 16 client processes queueing for one
   resource: hand-off latency p50/p99 and Jain's fairness index;
3. SIGKILL to re-grant (`bench.regrant`): a session holder is killed, how
   soon its waiter is granted;
4. auth (`bench.auth`): the cycle of 1 at 1 and 4 clients with
   authentication off and on (two brokers, one after the other), and the
   ratios on/off;
5. events (`bench.events`): event rows per cycle, and the time of writing
   them as a share of the cycle's (on a broker of its own);
6. fan-out (`bench.fanout`): 100 `WatchEvents` streams on one broker (of
   its own) while a client runs cycles: events/s produced and delivered,
   lags, the broker's CPU.
7. console (`bench.console`): 100 live console pages on one broker (of its
   own) while a client runs cycles: the broker's CPU with and without them,
   idle and busy, and the messages the pages were sent.

On PostgreSQL (`--postgres`, env BENCH_POSTGRES, default the local server's
`test` database), each broker layout in a fresh schema `bench_<random>`,
dropped at the end whatever happens:

8. throughput as in 1 on one broker, and on two brokers sharing the
   database (clients dealt round robin over them);
9. hand-off as in 2 with the waiting processes split over two brokers, so
   a release on one hands off to waiters on the other (LISTEN/NOTIFY);
10. freeze (`bench.freeze`): grants/s of three brokers before, during and
    after one of them is SIGSTOPped while it holds the write lock;
11. events and fan-out as in 5 and 6, each on one broker of its own.

Then on SQLite, each on a broker of its own (`bench.scale`): scale, a
cycle's cost as the inventory grows (10 to 10,000) and a release's as
waiting calls queue on other resources (0 to 1,000), with the ratio to the
smallest point; memory, the broker's RSS per waiting call (1,000).

Their points' names end in `_postgresql_1broker` / `_postgresql_2brokers`.
If PostgreSQL cannot be reached, one line says those points are skipped and
why, and the rest goes on.

Each prints a table; every point so far is (re)written after each one as a
JSON list of {"name", "clients", "value", "unit"} to `--json` (env
BENCH_JSON), the broker's throughput and hand-off points with a
`ratio_to` object ({"ceiling": r, "etcd": r}), the scale points with
{"smallest": r}. The run ends with a table of those ratios, and with `--plot
DIR` PNG plots (`bench.plot`). Every broker and client process is stopped by its pid whatever
happens; the brokers' directory is a temporary one, removed at the end. Exit
status 1 if any point had errors (missed targets are printed, not failed).

    .venv/bin/python -m bench
    .venv/bin/python -m bench --only handoff,regrant --handoff-duration 3
    .venv/bin/python -m bench --databases postgresql --only throughput
    .venv/bin/python -m bench --only freeze --freeze-seconds 16
    .venv/bin/python -m bench --only auth
    .venv/bin/python -m bench --only fanout --databases sqlite --watchers 100
    .venv/bin/python -m bench --only console --pages 100
    .venv/bin/python -m bench --only ceiling,etcd,throughput,handoff --databases sqlite
    .venv/bin/python -m bench --only scale,memory --plot /tmp/plots
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

from bench import compare
from bench.broker_process import (
    Broker,
    loopback_problem,
    postgres_problem,
    postgres_schema,
    seed,
    start_broker,
)

SUITES = (
    "ceiling",
    "etcd",
    "throughput",
    "handoff",
    "regrant",
    "freeze",
    "auth",
    "events",
    "fanout",
    "console",
    "scale",
    "memory",
)
# The suites that share the one SQLite broker.
SHARED_SQLITE = ("throughput", "handoff", "regrant")
DATABASES = ("sqlite", "postgresql")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# How many brokers share the PostgreSQL database for each point.
POSTGRES_THROUGHPUT_BROKERS = (1, 2)
POSTGRES_HANDOFF_BROKERS = 2


def client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,4,16") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more counts, each at least 1")
    return counts


def choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """A parser of a comma-separated subset of `allowed`."""

    def parse(text: str) -> list[str]:
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = sorted(set(chosen) - set(allowed))
        if not chosen or unknown:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(allowed)}")
        return chosen

    return parse


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, hand-off and SIGKILL re-grant against a broker subprocess.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    option = parser.add_argument
    option("--only", type=choices(SUITES), default=",".join(SUITES), help="which points to run")
    option(
        "--databases",
        type=choices(DATABASES),
        default=",".join(DATABASES),
        help="on which backends (regrant and auth run on SQLite only)",
    )
    option(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", POSTGRES_URL),
        help="PostgreSQL server on 127.0.0.1 for the postgresql points (env BENCH_POSTGRES)",
    )
    option("--duration", type=positive, default=4.0, help="seconds measured per throughput point")
    option("--warmup", type=float, default=1.0, help="uncounted seconds before each timed point")
    option("--clients", type=client_counts, default="1,4,16", help="throughput points")
    option("--processes", type=int, default=4, help="most client processes per throughput point")
    option("--handoff-clients", type=int, default=16, help="waiting processes on one resource")
    option("--handoff-duration", type=positive, default=5.0, help="seconds of hand-offs measured")
    option("--hold-ms", type=float, default=1.0, help="how long each hand-off client holds")
    option("--regrant-trials", type=int, default=5, help="SIGKILLs of a session holder")
    option("--freeze-seconds", type=positive, default=10.0, help="how long one broker stays frozen")
    option("--auth-clients", type=client_counts, default="1,4", help="auth points")
    option(
        "--events-cycles", type=int, default=2000, help="cycles' events written again in process"
    )
    option("--watchers", type=int, default=100, help="WatchEvents streams of the fan-out")
    option("--pages", type=int, default=100, help="live console pages of the console point")
    option("--scale-seconds", type=positive, default=1.5, help="seconds of cycles per scale point")
    option(
        "--json",
        default=os.environ.get("BENCH_JSON", "bench-results.json"),
        help="where to write the results (env BENCH_JSON)",
    )
    option("--plot", metavar="DIR", help="also write PNG plots into DIR (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.handoff_clients < 2 or args.regrant_trials < 1 or args.hold_ms < 0:
        parser.error("--handoff-clients >= 2, --regrant-trials >= 1 and --hold-ms >= 0")
    if args.events_cycles < 1 or args.watchers < 1:
        parser.error("--events-cycles >= 1 and --watchers >= 1")
    if "postgresql" in args.databases and (problem := loopback_problem(args.postgres)):
        parser.error(f"--postgres: {problem}")
    return args


def write_points(points: list[dict], json_path: str) -> None:
    compare.add_ratios(points)
    with open(json_path, "w", encoding="utf-8") as stream:
        json.dump(points, stream, indent=1)
        stream.write("\n")


@contextlib.contextmanager
def brokers(
    workdir: str,
    database_url: str | None,
    count: int,
    names: Sequence[str],
    auth: bool = False,
    console: bool = False,
) -> Iterator[Broker]:
    """`count` brokers on `database_url` (None: SQLite in `workdir`) with
    `names` seeded, described in one line; stopped at the end. With `auth`,
    authentication is on (see `start_broker`)."""
    import grpc

    os.makedirs(workdir, exist_ok=True)
    broker = start_broker(workdir, database_url, count, auth=auth, console=console)
    try:
        seed(broker.address, names, broker.token)
        where = database_url.split("?", 1)[-1] if database_url else "SQLite"
        where += ", authentication on" if auth else ""
        listing = ", ".join(
            f"pid {pid} on {address}"
            for pid, address in zip(broker.pids, broker.addresses, strict=True)
        )
        print(
            f"# {'broker' if count == 1 else f'{count} brokers'} ({where}): {listing}; "
            f"grpcio {grpc.__version__}; {os.cpu_count()} cpus",
            flush=True,
        )
        yield broker
    finally:
        broker.stop()


def on_postgresql(count: int) -> tuple[str, str]:
    """A table's "on what" and the points' name suffix for `count` brokers
    on PostgreSQL."""
    if count == 1:
        return " on PostgreSQL, 1 broker", "_postgresql_1broker"
    return (
        f" on PostgreSQL, {count} brokers on one database (clients dealt round robin)",
        f"_postgresql_{count}brokers",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the brokers and the clients are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from bench import auth, console, events, fanout, freeze, handoff, regrant, scale, throughput

    points: list[dict] = []
    errors = 0
    names = [f"bench-{i:03d}" for i in range(max(*args.clients, *args.auth_clients))]
    freeze_names = [f"bench-{i:03d}" for i in range(freeze.CLIENTS)]

    def record(result) -> None:
        nonlocal errors
        print(result.row(), flush=True)
        if result.errors:
            print(f"        first error: {result.first_error}", flush=True)
        errors += result.errors
        points.extend(result.points())
        write_points(points, args.json)

    def throughput_points(broker: Broker, where: str = "", variant: str = "") -> None:
        print(
            f"# throughput{where}: {args.duration:g} s per point after {args.warmup:g} s "
            "warm-up; uncontended acquire(by name)+release",
            flush=True,
        )
        print(throughput.TABLE_HEADER, flush=True)
        for clients in args.clients:
            record(
                throughput.run_point(
                    broker,
                    names,
                    clients,
                    duration=args.duration,
                    warmup=args.warmup,
                    max_processes=max(1, args.processes),
                    variant=variant,
                )
            )

    def handoff_point(broker: Broker, where: str = "", variant: str = "") -> None:
        print(handoff.header(args.handoff_clients, args.hold_ms / 1e3, where), flush=True)
        result = handoff.run_handoff(
            broker,
            args.handoff_clients,
            duration=args.handoff_duration,
            warmup=args.warmup,
            hold=args.hold_ms / 1e3,
            variant=variant,
        )
        record(result)
        print(result.targets(), flush=True)

    def events_point(
        workdir: str, database_url: str | None, backend: str, variant: str = ""
    ) -> None:
        print(events.header(args.duration, args.warmup, args.events_cycles), flush=True)
        with brokers(workdir, database_url, 1, names[:1]) as broker:
            cycle = events.run_cycles(
                broker, names, duration=args.duration, warmup=args.warmup, variant=variant
            )
        record(events.measure_writes(broker.database_url, backend, cycle, args.events_cycles))

    def fanout_point(
        workdir: str, database_url: str | None, where: str = "", variant: str = ""
    ) -> None:
        print(fanout.header(args.watchers, args.duration, args.warmup, where), flush=True)
        with brokers(workdir, database_url, 1, names[:1]) as broker:
            record(
                fanout.run_fanout(
                    broker,
                    names,
                    args.watchers,
                    duration=args.duration,
                    warmup=args.warmup,
                    variant=variant,
                )
            )

    def references(workdir: str) -> None:
        """The ceiling and etcd, each with the throughput clients' layout
        (and etcd with the hand-off's), before the broker's points."""
        from bench import ceiling, etcd

        processes = max(1, args.processes)
        if "ceiling" in args.only:
            server = ceiling.start_ceiling(os.path.join(workdir, "ceiling"), names)
            try:
                print(f"{ceiling.HEADER}; pid {server.pids[0]} on {server.address}", flush=True)
                print(throughput.TABLE_HEADER, flush=True)
                for clients in args.clients:
                    record(
                        throughput.run_point(
                            server, names, clients, duration=args.duration, warmup=args.warmup,
                            max_processes=processes, worker=ceiling.ceiling_worker,
                            variant="_ceiling",
                        )
                    )  # fmt: skip
            finally:
                server.stop()
        if "etcd" not in args.only:
            return
        binary = etcd.etcd_binary()
        if binary is None:
            print(
                "# etcd reference skipped: no etcd on PATH (Debian: apt-get install etcd-server)",
                flush=True,
            )
            return
        with etcd.etcd_server(binary) as (server, version):
            print(
                f"# etcd {version} ({binary}), pid {server.pids[0]} on {server.address}; "
                f"client: {etcd.CLIENT_API}; throughput: Lock(own name)+Unlock, same layout",
                flush=True,
            )
            print(throughput.TABLE_HEADER, flush=True)
            for clients in args.clients:
                record(
                    throughput.run_point(
                        server, names, clients, duration=args.duration, warmup=args.warmup,
                        max_processes=processes, worker=etcd.lock_worker,
                        variant="_etcd", connect=etcd.connect,
                    )
                )  # fmt: skip
            print(etcd.handoff_header(args.handoff_clients, args.hold_ms / 1e3), flush=True)
            record(
                handoff.run_handoff(
                    server, args.handoff_clients, duration=args.handoff_duration,
                    warmup=args.warmup, hold=args.hold_ms / 1e3, variant="_etcd",
                    client=etcd.handoff_client, ordered_by_time=True,
                )
            )  # fmt: skip

    def scale_points(workdir: str) -> None:
        layouts = []
        if "scale" in args.only:
            layouts += [
                ("resources", [scale.PROBE], scale.header("resources", args.scale_seconds)),
                ("waiters", [scale.PROBE, *scale.HELD],
                 scale.header("waiters", args.scale_seconds)),
            ]  # fmt: skip
        if "memory" in args.only:
            layouts.append(("memory", scale.HELD, scale.MEMORY_HEADER))
        run = {
            "resources": lambda b: scale.run_resources(b, args.scale_seconds),
            "waiters": lambda b: scale.run_waiters(b, args.scale_seconds),
            "memory": scale.run_memory,
        }
        for what, seeded, heading in layouts:
            with brokers(os.path.join(workdir, f"scale-{what}"), None, 1, seeded) as broker:
                print(heading, flush=True)
                record(run[what](broker))

    def on_sqlite(workdir: str) -> None:
        if any(suite in args.only for suite in SHARED_SQLITE):
            with brokers(workdir, None, 1, [*names, handoff.RESOURCE, regrant.RESOURCE]) as broker:
                if "throughput" in args.only:
                    throughput_points(broker)
                if "handoff" in args.only:
                    handoff_point(broker)
                if "regrant" in args.only:
                    print(regrant.HEADER, flush=True)
                    result = regrant.run_regrant(broker, args.regrant_trials)
                    record(result)
                    print(result.targets(), flush=True)
        if "auth" in args.only:
            print(auth.header(args.auth_clients, args.duration, args.warmup), flush=True)
            record(
                auth.run_auth(
                    lambda where, seeded, on: brokers(where, None, 1, seeded, auth=on),
                    workdir,
                    names,
                    args.auth_clients,
                    duration=args.duration,
                    warmup=args.warmup,
                    max_processes=max(1, args.processes),
                )
            )
        if "events" in args.only:
            events_point(os.path.join(workdir, "events"), None, "sqlite")
        if "fanout" in args.only:
            fanout_point(os.path.join(workdir, "fanout"), None)
        if "console" in args.only:
            print(console.header(args.pages, args.duration, args.warmup), flush=True)
            with brokers(os.path.join(workdir, "console"), None, 1, names[:1], console=True) as b:
                record(
                    console.run_console(
                        b, names, args.pages, duration=args.duration, warmup=args.warmup
                    )
                )

    def on_postgres(workdir: str) -> None:
        layouts = {
            count: (
                "throughput" in args.only and count in POSTGRES_THROUGHPUT_BROKERS,
                "handoff" in args.only and count == POSTGRES_HANDOFF_BROKERS,
            )
            for count in sorted({*POSTGRES_THROUGHPUT_BROKERS, POSTGRES_HANDOFF_BROKERS})
        }
        wants_freeze = "freeze" in args.only
        own_broker = [suite for suite in ("events", "fanout") if suite in args.only]
        if not (wants_freeze or own_broker) and not any(any(wanted) for wanted in layouts.values()):
            return
        problem = postgres_problem(args.postgres)
        if problem:
            print(f"# PostgreSQL points skipped: {problem}", flush=True)
            return
        for count, (wants_throughput, wants_handoff) in layouts.items():
            if not (wants_throughput or wants_handoff):
                continue
            where, variant = on_postgresql(count)
            with (
                postgres_schema(args.postgres) as url,
                brokers(
                    os.path.join(workdir, f"postgresql-{count}"),
                    url,
                    count,
                    [*names, handoff.RESOURCE],
                ) as broker,
            ):
                if wants_throughput:
                    throughput_points(broker, where, variant)
                if wants_handoff:
                    handoff_point(broker, where, variant)
        if wants_freeze:
            with (
                postgres_schema(args.postgres) as url,
                brokers(
                    os.path.join(workdir, "postgresql-freeze"), url, freeze.BROKERS, freeze_names
                ) as broker,
            ):
                print(freeze.header(args.duration, args.freeze_seconds), flush=True)
                result = freeze.run_freeze(
                    broker,
                    args.postgres,
                    freeze_names,
                    duration=args.duration,
                    freeze_seconds=args.freeze_seconds,
                    warmup=args.warmup,
                )
                record(result)
                print(result.targets(), flush=True)
        where, variant = on_postgresql(1)
        for suite in own_broker:
            with postgres_schema(args.postgres) as url:
                suite_dir = os.path.join(workdir, f"postgresql-{suite}")
                if suite == "events":
                    events_point(suite_dir, url, "postgresql", variant)
                else:
                    fanout_point(suite_dir, url, where, variant)

    with tempfile.TemporaryDirectory(prefix="broker-bench-") as workdir:
        try:
            references(workdir)
            if "sqlite" in args.databases:
                on_sqlite(workdir)
                scale_points(workdir)
            if "postgresql" in args.databases:
                on_postgres(workdir)
        except RuntimeError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
    write_points(points, args.json)
    print(compare.table(points), flush=True)
    if args.plot:
        from bench import plot

        for path in plot.plot(points, args.plot):
            print(f"# plot: {path}", flush=True)
    print(f"# results in {args.json}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
