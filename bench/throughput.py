"""Throughput: uncontended acquire+release cycles against a real broker.

The broker is `bench.broker_process`'s subprocess (or several on one
PostgreSQL database, the clients dealt round robin over them). Clients run
in other processes and talk to it over 127.0.0.1 only. Each client is one
thread with its own channel (its own TCP connection: channels do not share a
subchannel pool here) that acquires, by name, a Calculator no other client
asks for, then releases it, for a warm-up and then `--duration` seconds; only cycles
that end inside that window count. Per point: cycles/s, p50 and p99 of one
cycle's latency, and the broker's CPU use (in cores, all brokers added up)
during the window.

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

The whole bench (these points, then `bench.handoff` and `bench.regrant`) is
`bench.__main__`; running this module runs the whole bench too, so
`python -m bench.throughput` and `python -m bench` are the same command:

    .venv/bin/python -m bench                                   # every point
    .venv/bin/python -m bench --clients 1,4 --duration 2 --only throughput
    BENCH_JSON=out.json .venv/bin/python -m bench
"""

from __future__ import annotations

import array
import dataclasses
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

from bench.broker_process import (
    RPC_TIMEOUT,
    START_TIMEOUT,
    Broker,
    acquire_request,
    open_channel,
    percentile,
    stop_processes,
)

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
    from broker.v1 import lease_service_pb2_grpc

    stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
    run_cycles(stub.AcquireLease, stub.ReleaseLease, name, window, tally)


def run_cycles(acquire, release, name: str, window: Window, tally: Tally) -> None:
    """Acquires `name` with `acquire` and releases it with `release` (unary
    callables taking the broker's messages) until the window closes."""
    from broker.v1 import lease_service_pb2

    request = acquire_request(name, f"bench@{name}")

    def cycle() -> None:
        granted = acquire(request, timeout=RPC_TIMEOUT)
        release(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=granted.lease.lease_id, secret=granted.secret
            ),
            timeout=RPC_TIMEOUT,
        )

    timed_cycles(cycle, window, tally)


def rpc_error_text(error: Exception) -> str:
    return f"{error.code().name}: {error.details()}"


def timed_cycles(
    cycle: Callable[[], None],
    window: Window,
    tally: Tally,
    failures: tuple[type[Exception], ...] = (),
    describe: Callable[[Exception], str] = rpc_error_text,
) -> None:
    """Runs `cycle()` again and again until the window closes; records the
    latency of each that ends inside it, and counts those that raise one of
    `failures` (default: a gRPC error) as errors."""
    import grpc

    failures = failures or (grpc.RpcError,)
    clock, wall_offset = time.perf_counter, time.time() - time.perf_counter()
    start, end = window.measure_start - wall_offset, window.measure_end - wall_offset
    while True:
        began = clock()
        if began >= end:
            return
        try:
            cycle()
        except failures as error:
            tally.errors += 1
            tally.first_error = tally.first_error or describe(error)
            time.sleep(0.01)
            continue
        ended = clock()
        if start <= ended < end:
            tally.latencies.append(ended - began)


def client_process(
    addresses: Sequence[str],
    names: Sequence[str],
    worker: Callable,
    ready: multiprocessing.Queue,
    go,
    schedule,
    results: multiprocessing.Queue,
    token: str = "",
    connect: Callable | None = None,
) -> None:
    """One client process: a thread per name, each with a connection made by
    `connect(address, token)` (default: a gRPC channel, ready) to the server
    at the same place in `addresses`. Says it is ready once every one is
    connected, waits for `go`, runs `worker` in each thread over the window
    in `schedule`, and sends back what they measured."""
    channels = []
    try:
        for address in addresses:
            channels.append((connect or ready_channel)(address, token))
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


def ready_channel(address: str, token: str = ""):
    """A gRPC channel to `address` (sending `token`, if any), once connected."""
    import grpc

    channel = open_channel(address, token)
    grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
    return channel


# ------------------------------------------------------------------ points


@dataclasses.dataclass
class PointResult:
    clients: int
    processes: int
    duration: float
    latencies: list[float]  # seconds, sorted
    errors: int
    first_error: str
    server_cpu: float  # cores the broker(s) used during the window
    variant: str = ""  # appended to the points' names, e.g. "_postgresql_2brokers"
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock times when cycles counted

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.duration

    def percentile_ms(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1e3

    def row(self) -> str:
        return (
            f"{self.clients:>7} {self.processes:>5} {self.rate:>9.0f} "
            f"{self.percentile_ms(0.50):>7.2f} {self.percentile_ms(0.99):>7.2f} "
            f"{self.server_cpu:>7.2f} {self.errors:>6}"
        )

    def points(self) -> list[dict]:
        return [
            {"name": name + self.variant, "clients": self.clients, "value": value, "unit": unit}
            for name, value, unit in (
                ("acquire_release_cycles", round(self.rate, 1), "cycles/s"),
                ("acquire_release_p50", round(self.percentile_ms(0.50), 3), "ms"),
                ("acquire_release_p99", round(self.percentile_ms(0.99), 3), "ms"),
            )
        ]


TABLE_HEADER = "clients procs  cycles/s  p50 ms  p99 ms srv CPU errors"


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
    variant: str = "",
    connect: Callable | None = None,
) -> PointResult:
    """Runs `clients` concurrent clients, the i-th on `names[i]` through
    `broker.address_for(i)` (spread evenly over the brokers), in
    min(clients, max_processes) spawned processes, each call with the
    broker's token if it has one; measures `duration` seconds after
    `warmup` seconds. `worker` and `connect` (see `client_process`) let a
    reference server run the same client layout."""
    context = multiprocessing.get_context("spawn")
    processes = min(clients, max_processes)
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    schedule = context.Array("d", 2, lock=False)
    addresses = [broker.address_for(i) for i in range(clients)]
    members = [
        context.Process(
            target=client_process,
            args=(
                addresses[i::processes],
                names[i:clients:processes],
                worker,
                ready,
                go,
                schedule,
                results,
                broker.token,
                connect,
            ),
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
        cpu_start = broker.cpu_seconds()
        sleep_until(schedule[1])
        server_cpu = (broker.cpu_seconds() - cpu_start) / duration
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
        stop_processes(members)
    return PointResult(
        clients,
        processes,
        duration,
        sorted(latencies),
        errors,
        first_error,
        server_cpu,
        variant,
        (schedule[0], schedule[1]),
    )


if __name__ == "__main__":
    import sys

    from bench.__main__ import main

    sys.exit(main())
