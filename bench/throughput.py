"""`make bench`: uncontended acquire+release cycles against a real broker.

The broker runs as its own subprocess (`broker serve`, a temp dir with its own
SQLite file and configuration, 127.0.0.1 and a free port, ready when it prints
`broker listening on HOST:PORT`, stopped by its pid whatever happens). Clients
run in other processes and talk to it over 127.0.0.1 only. Each client is one
thread with its own channel (its own TCP connection: channels do not share a
subchannel pool here) that acquires, by name, a Calculator no other client
asks for, then releases it, for a warm-up and then `--duration` seconds; only
cycles that end inside that window count. Per point: cycles/s, p50 and p99 of
one cycle's latency, and the broker's CPU use (in cores) during the window.

Client layout, N clients: min(N, --processes) spawned processes (at most 4
by default), the N threads dealt among them. On a 2-core machine the clients
share the cores with the broker, so they must cost as little as possible:
a blocking gRPC call releases the GIL, so a thread per client is cheap, while
a process per client spends interpreters and context switches on the core the
broker needs, and a single process makes the clients' own GIL part of what is
measured. In trials (`--processes 1`, 2, 4, 16 at 16 clients) cycles/s moved
by less than the run-to-run noise because the broker is the saturated side
(see the srv CPU column); 4 is the middle ground. The reference
(`shared/anchors/grpc_ceiling.py`) also uses separate client processes, a
closed loop and counts cycles by completion time, so the two compare as a
ratio when run in the same sitting.

    .venv/bin/python -m bench.throughput                      # 1, 4, 16 clients, 4 s each
    .venv/bin/python -m bench.throughput --clients 1,4 --duration 2
    BENCH_JSON=out.json .venv/bin/python -m bench.throughput

New points (hand-off latency, SIGKILL re-grant) reuse `start_broker`, `seed`
and `run_point` with another per-thread worker like `acquire_release_worker`,
and add their rows to `report`.
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIND = "Calculator"
KIND_MODEL = "resources.calculator.data.CalculatorData"
READY_PREFIX = "broker listening on "
START_TIMEOUT = 30.0  # seconds for the broker, or the clients, to be ready
RPC_TIMEOUT = 10.0
LEASE_TTL = 60  # seconds; a cycle's lease is released long before
# Each channel its own connection, as separate test runs would have.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

CONFIG_YAML = """\
server:
  max_concurrent_rpcs: 4096
  grace_seconds: 1.0
database:
  url: sqlite:///broker.sqlite3
kinds:
  - {kind_model}
"""


# ------------------------------------------------------------------ broker


@dataclasses.dataclass
class Broker:
    """A broker subprocess; `stop()` ends it by its pid."""

    process: subprocess.Popen
    address: str
    log_path: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)


def broker_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "broker")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "broker"]


def start_broker(workdir: str) -> Broker:
    """Starts `broker serve` on 127.0.0.1:0 with a fresh SQLite file in
    `workdir`; returns once it has printed the address it listens on."""
    config_path = os.path.join(workdir, "rotest.yml")
    with open(config_path, "w", encoding="utf-8") as stream:
        stream.write(CONFIG_YAML.format(kind_model=KIND_MODEL))
    database_url = "sqlite:///" + os.path.join(workdir, "broker.sqlite3")
    log_path = os.path.join(workdir, "broker.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    command = [
        *broker_command(),
        "serve",
        "--config", config_path,
        "--address", "127.0.0.1:0",
        "--database", database_url,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, cwd=workdir, env=env, text=True
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # reads stdout to the end so the pipe never fills
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    broker = Broker(process, "", log_path)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                problem = f"the broker was not ready in {START_TIMEOUT:g} s"
                break
            if line is None:
                problem = f"the broker exited with status {process.wait()}"
                break
            if line.startswith(READY_PREFIX):
                broker.address = line[len(READY_PREFIX) :].strip()
                return broker
    except BaseException:
        broker.stop()
        raise
    broker.stop()
    with open(log_path, encoding="utf-8", errors="replace") as log:
        raise RuntimeError(f"{problem}; its log ends:\n{log.read()[-2000:]}")


def seed(address: str, count: int) -> list[str]:
    """Creates `count` Calculator resources; returns their names."""
    import grpc

    from broker.v1 import inventory_service_pb2, inventory_service_pb2_grpc, resource_pb2

    names = [f"bench-{i:03d}" for i in range(count)]
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        for name in names:
            resource = resource_pb2.Resource(
                name=name,
                kind=KIND,
                fields={"ip_address": resource_pb2.FieldValue(string_value="127.0.0.1")},
            )
            stub.CreateResource(
                inventory_service_pb2.CreateResourceRequest(resource=resource),
                timeout=RPC_TIMEOUT,
            )
    return names


# ----------------------------------------------------------------- clients


@dataclasses.dataclass
class Window:
    """When cycles count: those that end in [measure_start, measure_end)
    (wall-clock times, shared by every process on the machine)."""

    measure_start: float
    measure_end: float


@dataclasses.dataclass
class Tally:
    """What one client thread measured."""

    latencies: array.array = dataclasses.field(default_factory=lambda: array.array("d"))
    errors: int = 0
    first_error: str = ""


def acquire_release_worker(channel, name: str, window: Window, tally: Tally) -> None:
    """Acquires `name` by name and releases it, again and again, until the
    window closes; records each whole cycle's latency in seconds."""
    import grpc
    from google.protobuf import duration_pb2

    from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc, resource_pb2

    stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
    acquire_request = lease_service_pb2.AcquireLeaseRequest(
        requirements=[
            lease_pb2.Requirement(
                kind=KIND,
                constraints=[
                    lease_pb2.Constraint(
                        field="name", equals=resource_pb2.FieldValue(string_value=name)
                    )
                ],
            )
        ],
        ttl=duration_pb2.Duration(seconds=LEASE_TTL),
        holder=f"bench@{name}",
    )
    acquire, release = stub.AcquireLease, stub.ReleaseLease
    clock, wall_offset = time.perf_counter, time.time() - time.perf_counter()
    start, end = window.measure_start - wall_offset, window.measure_end - wall_offset
    while True:
        began = clock()
        if began >= end:
            return
        try:
            granted = acquire(acquire_request, timeout=RPC_TIMEOUT)
            release(
                lease_service_pb2.ReleaseLeaseRequest(
                    lease_id=granted.lease.lease_id, secret=granted.secret
                ),
                timeout=RPC_TIMEOUT,
            )
        except grpc.RpcError as error:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{error.code().name}: {error.details()}"
            time.sleep(0.01)
            continue
        ended = clock()
        if start <= ended < end:
            tally.latencies.append(ended - began)


def client_process(
    address: str,
    names: Sequence[str],
    worker: Callable,
    ready: multiprocessing.Queue,
    go,
    schedule,
    results: multiprocessing.Queue,
) -> None:
    """One client process: a thread and a channel per name. Says it is ready
    once every channel is connected, waits for `go`, runs `worker` in each
    thread over the window in `schedule`, and sends back what they measured."""
    import grpc

    channels = [grpc.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in names]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        ready.put(os.getpid())
        if not go.wait(START_TIMEOUT * 2):
            return
        window = Window(schedule[0], schedule[1])
        tallies = [Tally() for _ in names]
        threads = [
            threading.Thread(target=worker, args=(channel, name, window, tally))
            for channel, name, tally in zip(channels, names, tallies, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        latencies = array.array("d")
        for tally in tallies:
            latencies.extend(tally.latencies)
        results.put(
            {
                "latencies": latencies.tobytes(),
                "errors": sum(t.errors for t in tallies),
                "first_error": next((t.first_error for t in tallies if t.first_error), ""),
            }
        )
    finally:
        for channel in channels:
            channel.close()


# ------------------------------------------------------------------ points


@dataclasses.dataclass
class PointResult:
    clients: int
    processes: int
    duration: float
    latencies: list[float]  # seconds, sorted
    errors: int
    first_error: str
    server_cpu: float  # cores the broker used during the window

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.duration

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        rank = round(fraction * (len(self.latencies) - 1))
        return self.latencies[min(len(self.latencies) - 1, max(0, rank))] * 1e3


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (all its threads), or NaN off Linux."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sleep_until(wall_time: float) -> None:
    time.sleep(max(0.0, wall_time - time.time()))


def run_point(
    broker: Broker,
    names: Sequence[str],
    clients: int,
    *,
    duration: float,
    warmup: float,
    max_processes: int,
    worker: Callable = acquire_release_worker,
) -> PointResult:
    """Runs `clients` concurrent clients, the i-th on `names[i]`, in
    min(clients, max_processes) spawned processes; measures `duration`
    seconds after `warmup` seconds."""
    context = multiprocessing.get_context("spawn")
    processes = min(clients, max_processes)
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    schedule = context.Array("d", 2, lock=False)
    members = [
        context.Process(
            target=client_process,
            args=(broker.address, names[i:clients:processes], worker, ready, go, schedule, results),
            daemon=True,
        )
        for i in range(processes)
    ]
    try:
        for member in members:
            member.start()
        deadline = time.monotonic() + START_TIMEOUT
        for count in range(processes):
            try:
                ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"{count} of {processes} client processes connected in {START_TIMEOUT:g} s"
                ) from None
        schedule[0] = time.time() + warmup
        schedule[1] = schedule[0] + duration
        go.set()
        sleep_until(schedule[0])
        cpu_start = cpu_seconds(broker.pid)
        sleep_until(schedule[1])
        server_cpu = (cpu_seconds(broker.pid) - cpu_start) / duration
        latencies, errors, first_error = array.array("d"), 0, ""
        for count in range(processes):
            try:
                part = results.get(timeout=RPC_TIMEOUT * 2 + START_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"{count} of {processes} client processes reported") from None
            latencies.frombytes(part["latencies"])
            errors += part["errors"]
            first_error = first_error or part["first_error"]
        for member in members:
            member.join(START_TIMEOUT)
    finally:
        for member in members:
            if member.is_alive():
                member.kill()
                member.join(5)
    return PointResult(
        clients, processes, duration, sorted(latencies), errors, first_error, server_cpu
    )


# ------------------------------------------------------------------ report


def report(results: Sequence[PointResult], json_path: str) -> None:
    """Prints the table's last row and writes every point so far as JSON."""
    result = results[-1]
    print(
        f"{result.clients:>7} {result.processes:>5} {result.rate:>9.0f} "
        f"{result.percentile_ms(0.50):>7.2f} {result.percentile_ms(0.99):>7.2f} "
        f"{result.server_cpu:>7.2f} {result.errors:>6}",
        flush=True,
    )
    if result.errors:
        print(f"        first error: {result.first_error}", flush=True)
    points = []
    for r in results:
        for name, value, unit in (
            ("acquire_release_cycles", round(r.rate, 1), "cycles/s"),
            ("acquire_release_p50", round(r.percentile_ms(0.50), 3), "ms"),
            ("acquire_release_p99", round(r.percentile_ms(0.99), 3), "ms"),
        ):
            points.append({"name": name, "clients": r.clients, "value": value, "unit": unit})
    with open(json_path, "w", encoding="utf-8") as stream:
        json.dump(points, stream, indent=1)
        stream.write("\n")


TABLE_HEADER = "clients procs  cycles/s  p50 ms  p99 ms srv CPU errors"


# -------------------------------------------------------------------- main


def client_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,4,16") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more counts, each at least 1")
    return counts


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Uncontended acquire+release cycles against a broker subprocess.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    option = parser.add_argument
    option("--duration", type=positive, default=4.0, help="seconds measured per point")
    option("--warmup", type=float, default=1.0, help="uncounted seconds before each point")
    option("--clients", type=client_counts, default="1,4,16", help="points, e.g. 1,4,16")
    option("--processes", type=int, default=4, help="most client processes per point")
    option(
        "--json",
        default=os.environ.get("BENCH_JSON", "bench-results.json"),
        help="where to write the results (env BENCH_JSON)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the broker and the clients are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import grpc

    results: list[PointResult] = []
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as workdir:
        try:
            broker = start_broker(workdir)
        except RuntimeError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
        try:
            names = seed(broker.address, max(args.clients))
            print(
                f"# broker pid {broker.pid} on {broker.address}; grpcio {grpc.__version__}; "
                f"{os.cpu_count()} cpus; {args.duration:g} s per point after {args.warmup:g} s "
                f"warm-up; uncontended acquire(by name)+release",
                flush=True,
            )
            print(TABLE_HEADER, flush=True)
            for clients in args.clients:
                point = run_point(
                    broker,
                    names,
                    clients,
                    duration=args.duration,
                    warmup=args.warmup,
                    max_processes=max(1, args.processes),
                )
                results.append(point)
                report(results, args.json)
        except RuntimeError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
        finally:
            broker.stop()
    print(f"# results in {args.json}", flush=True)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
