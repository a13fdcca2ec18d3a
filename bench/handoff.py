"""Hand-off latency and fairness: many waiting processes, one resource.

`--handoff-clients` (16) client processes, each one thread with its own
channel (its own TCP connection), queue for the same Calculator. Each loops:
`AcquireLease` with `max_wait` (it waits in the broker's queue), records
`time.monotonic()` as soon as the grant arrives, holds the lease for
`--hold-ms` (no work), records `time.monotonic()` just before sending
`ReleaseLease`, releases, and queues again at once. After `--warmup`
seconds, `--handoff-duration` seconds are measured; then the clients stop
queueing and the ones still waiting are served and leave.

CLOCK_MONOTONIC (Python's `time.monotonic()` on Linux) is one clock for the
whole machine, so times taken in different processes compare. The resource's
fencing number grows by one per grant, so the grants sorted by it are the
holders in order: the hand-off from the holder of grant k to that of k+1 is
grant(k+1) arrived - release(k) sent, i.e. the release's trip to the broker,
its transaction (which grants the next waiter), waking that waiter's call,
and the grant's trip back. Hand-offs whose release was sent in the window
count; a missing grant number (a failed call) drops the two hand-offs around
it. A negative hand-off would mean two holders at once: it is reported as an
error.

With several brokers on one PostgreSQL database the clients are dealt round
robin over them, so consecutive holders are mostly on different brokers: the
release's transaction on one broker grants the waiter, and its NOTIFY wakes
the waiting call on the other, which then reads its grant.

Fairness is Jain's index over the clients' grant counts in the window:
(sum x)^2 / (n * sum x^2), 1.0 when every client got as many grants.
"""

from __future__ import annotations

import array
import dataclasses
import multiprocessing
import os
import queue
import time
from collections.abc import Callable

from bench.broker_process import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT,
    START_TIMEOUT,
    Broker,
    acquire_request,
    percentile,
    stop_processes,
)

RESOURCE = "handoff-000"
MAX_WAIT = 10.0  # seconds a client waits in the queue before giving up

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_JAIN = 0.99

# ----------------------------------------------------------------- clients


def handoff_client(
    address: str,
    name: str,
    index: int,
    hold: float,
    ready: multiprocessing.Queue,
    go,
    schedule,
    results: multiprocessing.Queue,
) -> None:
    """One waiting client: says it is ready once its channel is connected,
    waits for `go`, then acquires (waiting in the queue), holds for `hold`
    seconds and releases, again and again until `schedule[1]` (monotonic
    seconds); sends back (fencing number, grant time, release time) per
    grant."""
    import grpc

    from broker.v1 import lease_service_pb2, lease_service_pb2_grpc

    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        acquire, release = stub.AcquireLease, stub.ReleaseLease
        request = acquire_request(name, f"bench-handoff-{index}@{name}", max_wait=MAX_WAIT)
        ready.put(os.getpid())
        if not go.wait(START_TIMEOUT * 2):
            return
        end = schedule[1]
        clock, sleep = time.monotonic, time.sleep
        records = array.array("d")  # fencing number, grant time, release time
        errors, first_error = 0, ""
        while clock() < end:
            try:
                granted = acquire(request, timeout=MAX_WAIT + RPC_TIMEOUT)
                granted_at = clock()
                if hold > 0:
                    sleep(hold)
                released_at = clock()
                release(
                    lease_service_pb2.ReleaseLeaseRequest(
                        lease_id=granted.lease.lease_id, secret=granted.secret
                    ),
                    timeout=RPC_TIMEOUT,
                )
            except grpc.RpcError as error:
                errors += 1
                first_error = first_error or f"{error.code().name}: {error.details()}"
                sleep(0.01)
                continue
            records.extend((granted.lease.grants[0].fencing_token, granted_at, released_at))
        results.put(
            {
                "index": index,
                "records": records.tobytes(),
                "errors": errors,
                "first_error": first_error,
            }
        )
    finally:
        channel.close()


# ------------------------------------------------------------------ result


@dataclasses.dataclass
class HandoffResult:
    clients: int
    duration: float
    hold: float
    handoffs: list[float]  # seconds, sorted
    grants: list[int]  # per client, grants that arrived in the window
    errors: int
    first_error: str
    server_cpu: float
    variant: str = ""  # appended to the points' names, e.g. "_postgresql_2brokers"

    @property
    def rate(self) -> float:
        return sum(self.grants) / self.duration

    def percentile_ms(self, fraction: float) -> float:
        return percentile(self.handoffs, fraction) * 1e3

    @property
    def jain(self) -> float:
        total, squares = sum(self.grants), sum(x * x for x in self.grants)
        return total * total / (len(self.grants) * squares) if squares else float("nan")

    def row(self) -> str:
        return (
            f"{self.clients:>7} {self.rate:>9.0f} {len(self.handoffs):>9} "
            f"{self.percentile_ms(0.50):>7.2f} {self.percentile_ms(0.99):>7.2f} "
            f"{self.percentile_ms(1.0):>7.2f} {self.jain:>6.4f} {self.server_cpu:>7.2f} "
            f"{self.errors:>6}"
        )

    def targets(self) -> str:
        def verdict(ok: bool) -> str:
            return "met" if ok else "MISSED"

        p50, p99 = self.percentile_ms(0.50), self.percentile_ms(0.99)
        return (
            f"# targets: p50 <= {TARGET_P50_MS:g} ms {verdict(p50 <= TARGET_P50_MS)}, "
            f"p99 <= {TARGET_P99_MS:g} ms {verdict(p99 <= TARGET_P99_MS)}, "
            f"jain >= {TARGET_JAIN:g} {verdict(self.jain >= TARGET_JAIN)}; "
            f"grants per client {min(self.grants)}..{max(self.grants)}"
        )

    def points(self) -> list[dict]:
        return [
            {"name": name + self.variant, "clients": self.clients, "value": value, "unit": unit}
            for name, value, unit in (
                ("handoff_latency_p50", round(self.percentile_ms(0.50), 3), "ms"),
                ("handoff_latency_p99", round(self.percentile_ms(0.99), 3), "ms"),
                ("handoff_fairness_jain", round(self.jain, 4), "index"),
            )
        ]


def header(clients: int, hold: float, where: str = "") -> str:
    """The table's heading; `where` says on what, e.g. " on PostgreSQL"."""
    return (
        f"# hand-off{where}: {clients} client processes queue for one Calculator "
        f"(AcquireLease, max_wait {MAX_WAIT:g} s), hold {hold * 1e3:g} ms, release, "
        "queue again; hand-off = release sent -> next grant arrived (CLOCK_MONOTONIC)\n"
        "clients  grants/s hand-offs  p50 ms  p99 ms  max ms   jain srv CPU errors"
    )


def analyse(
    parts: list[dict], clients: int, start: float, end: float
) -> tuple[list[float], list[int], int, str]:
    """Hand-offs in [start, end) (by release time), grants per client in the
    window (by arrival time), and the errors: the clients' plus overlaps."""
    by_token: dict[int, tuple[float, float]] = {}
    grants = [0] * clients
    errors, first_error = 0, ""
    for part in parts:
        errors += part["errors"]
        first_error = first_error or part["first_error"]
        values = array.array("d")
        values.frombytes(part["records"])
        for i in range(0, len(values), 3):
            token, granted_at, released_at = int(values[i]), values[i + 1], values[i + 2]
            by_token[token] = (granted_at, released_at)
            if start <= granted_at < end:
                grants[part["index"]] += 1
    handoffs = []
    for token, (_, released_at) in by_token.items():
        following = by_token.get(token + 1)
        if following is None or not start <= released_at < end:
            continue
        handoff = following[0] - released_at
        if handoff < 0:
            errors += 1
            first_error = first_error or (
                f"grant {token + 1} arrived {-handoff * 1e3:.3f} ms before grant {token} "
                "was released: two holders at once"
            )
        handoffs.append(handoff)
    return sorted(handoffs), grants, errors, first_error


def number_by_arrival(parts: list[dict]) -> None:
    """Gives the grants in `parts` the numbers 1, 2, ... in the order they
    arrived, in place of a fencing number."""
    unpacked = []
    for part in parts:
        values = array.array("d")
        values.frombytes(part["records"])
        unpacked.append(values)
    arrivals = sorted(
        (values[i + 1], which, i)
        for which, values in enumerate(unpacked)
        for i in range(0, len(values), 3)
    )
    for number, (_, which, i) in enumerate(arrivals, 1):
        unpacked[which][i] = number
    for part, values in zip(parts, unpacked, strict=True):
        part["records"] = values.tobytes()


def run_handoff(
    broker: Broker,
    clients: int,
    *,
    duration: float,
    warmup: float,
    hold: float,
    variant: str = "",
    client: Callable = handoff_client,
    ordered_by_time: bool = False,
) -> HandoffResult:
    """Runs `clients` waiting client processes on `RESOURCE` (seeded by the
    caller), the i-th through `broker.address_for(i)` (several brokers: a
    release on one hands off to waiters on the others too), and measures
    `duration` seconds after `warmup` seconds. Another server's `client`
    (same arguments as `handoff_client`) that has no fencing number sets
    `ordered_by_time`: the grants are then numbered by their arrival."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    schedule = context.Array("d", 2, lock=False)
    members = [
        context.Process(
            target=client,
            args=(broker.address_for(i), RESOURCE, i, hold, ready, go, schedule, results),
            daemon=True,
        )
        for i in range(clients)
    ]
    try:
        for member in members:
            member.start()
        deadline = time.monotonic() + START_TIMEOUT * 2
        for count in range(clients):
            try:
                ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"{count} of {clients} hand-off clients connected in {START_TIMEOUT * 2:g} s"
                ) from None
        schedule[0] = time.monotonic() + warmup
        schedule[1] = schedule[0] + duration
        go.set()
        time.sleep(max(0.0, schedule[0] - time.monotonic()))
        cpu_start = broker.cpu_seconds()
        time.sleep(max(0.0, schedule[1] - time.monotonic()))
        server_cpu = (broker.cpu_seconds() - cpu_start) / duration
        parts = []
        for count in range(clients):
            try:
                parts.append(results.get(timeout=MAX_WAIT + RPC_TIMEOUT * 2))
            except queue.Empty:
                raise RuntimeError(f"{count} of {clients} hand-off clients reported") from None
        for member in members:
            member.join(START_TIMEOUT)
    finally:
        stop_processes(members)
    if ordered_by_time:
        number_by_arrival(parts)
    handoffs, grants, errors, first_error = analyse(parts, clients, schedule[0], schedule[1])
    return HandoffResult(
        clients, duration, hold, handoffs, grants, errors, first_error, server_cpu, variant
    )
