"""`make bench`: every bench point against one real broker subprocess.

1. throughput (`bench.throughput`): uncontended acquire+release cycles at 1,
   4 and 16 clients;
2. hand-off (`bench.handoff`): 16 client processes queueing for one
   resource: hand-off latency p50/p99 and Jain's fairness index;
3. SIGKILL to re-grant (`bench.regrant`): a session holder is killed, how
   soon its waiter is granted.

Each prints a table; every point so far is (re)written after each one as a
JSON list of {"name", "clients", "value", "unit"} to `--json` (env
BENCH_JSON). The broker and every client process are stopped by their pid
whatever happens; the broker's directory is a temporary one, removed at the
end. Exit status 1 if any point had errors (missed targets are printed, not
failed).

    .venv/bin/python -m bench
    .venv/bin/python -m bench --only handoff,regrant --handoff-duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence

from bench.broker_process import seed, start_broker

SUITES = ("throughput", "handoff", "regrant")


def client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,4,16") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more counts, each at least 1")
    return counts


def suites(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(SUITES))
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(SUITES)}")
    return chosen


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
    option("--only", type=suites, default=",".join(SUITES), help="which points to run")
    option("--duration", type=positive, default=4.0, help="seconds measured per throughput point")
    option("--warmup", type=float, default=1.0, help="uncounted seconds before each timed point")
    option("--clients", type=client_counts, default="1,4,16", help="throughput points")
    option("--processes", type=int, default=4, help="most client processes per throughput point")
    option("--handoff-clients", type=int, default=16, help="waiting processes on one resource")
    option("--handoff-duration", type=positive, default=5.0, help="seconds of hand-offs measured")
    option("--hold-ms", type=float, default=1.0, help="how long each hand-off client holds")
    option("--regrant-trials", type=int, default=5, help="SIGKILLs of a session holder")
    option(
        "--json",
        default=os.environ.get("BENCH_JSON", "bench-results.json"),
        help="where to write the results (env BENCH_JSON)",
    )
    args = parser.parse_args(argv)
    if args.handoff_clients < 2 or args.regrant_trials < 1 or args.hold_ms < 0:
        parser.error("--handoff-clients >= 2, --regrant-trials >= 1 and --hold-ms >= 0")
    return args


def write_points(points: list[dict], json_path: str) -> None:
    with open(json_path, "w", encoding="utf-8") as stream:
        json.dump(points, stream, indent=1)
        stream.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the broker and the clients are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import grpc

    from bench import handoff, regrant, throughput

    points: list[dict] = []
    errors = 0

    def record(result) -> None:
        nonlocal errors
        print(result.row(), flush=True)
        if result.errors:
            print(f"        first error: {result.first_error}", flush=True)
        errors += result.errors
        points.extend(result.points())
        write_points(points, args.json)

    with tempfile.TemporaryDirectory(prefix="broker-bench-") as workdir:
        try:
            broker = start_broker(workdir)
        except RuntimeError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
        try:
            names = [f"bench-{i:03d}" for i in range(max(args.clients))]
            seed(broker.address, [*names, handoff.RESOURCE, regrant.RESOURCE])
            print(
                f"# broker pid {broker.pid} on {broker.address}; grpcio {grpc.__version__}; "
                f"{os.cpu_count()} cpus",
                flush=True,
            )
            if "throughput" in args.only:
                print(
                    f"# throughput: {args.duration:g} s per point after {args.warmup:g} s "
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
                        )
                    )
            if "handoff" in args.only:
                print(handoff.header(args.handoff_clients, args.hold_ms / 1e3), flush=True)
                result = handoff.run_handoff(
                    broker,
                    args.handoff_clients,
                    duration=args.handoff_duration,
                    warmup=args.warmup,
                    hold=args.hold_ms / 1e3,
                )
                record(result)
                print(result.targets(), flush=True)
            if "regrant" in args.only:
                print(regrant.HEADER, flush=True)
                result = regrant.run_regrant(broker, args.regrant_trials)
                record(result)
                print(result.targets(), flush=True)
        except RuntimeError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
        finally:
            broker.stop()
    print(f"# results in {args.json}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
