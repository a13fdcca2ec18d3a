"""Scale points: how a cycle's cost grows with the inventory and the queue,
and what a waiting call costs in memory.

Each on a broker of its own (SQLite), with one client in this process on one
channel, cycles one after the other:

- resources: the inventory grows 10 -> 100 -> 1,000 -> 10,000 Calculators
  (created through `CreateResource`, many in flight); at each size, the cost
  of acquiring (by name) and releasing one more, free Calculator that nobody
  else asks for;
- waiters: 10 Calculators are held, and 0 -> 10 -> 100 -> 1,000 waiting
  `AcquireLease` calls queue for them (from one client process, on
  `WAITER_CHANNELS` channels, `grpc.aio`); at each length, the cost of
  ReleaseLease (and of the whole cycle) on a free Calculator none of them
  waits for;
- memory: the broker's VmRSS (from /proc/<pid>/status) before and after
  1,000 waiting calls queue, divided by 1,000.

Every cost point is the median of the cycles that fit in `seconds` (at most
`MAX_CYCLES`), after a few uncounted ones; ratios are to the smallest point.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Sequence

from bench.broker_process import (
    CHANNEL_OPTIONS,
    KIND,
    RPC_TIMEOUT,
    START_TIMEOUT,
    Broker,
    acquire_request,
    percentile,
    stop_processes,
)

RESOURCE_COUNTS = (10, 100, 1_000, 10_000)
WAITER_COUNTS = (0, 10, 100, 1_000)
MEMORY_WAITERS = 1_000
PROBE = "scale-probe"
HELD = [f"scale-held-{i:03d}" for i in range(10)]
WAITER_CHANNELS = 10
WAIT_SECONDS = 120.0  # the waiting calls' max_wait: longer than any point
MAX_CYCLES = 400
WARMUP_CYCLES = 5
IN_FLIGHT = 64  # CreateResource calls at once while the inventory grows


@dataclasses.dataclass
class ScalePoint:
    size: int
    cycle_ms: float  # median acquire+release
    release_ms: float  # median release alone
    p99_ms: float  # cycle
    cycles: int


@dataclasses.dataclass
class ScaleResult:
    what: str  # "resources" or "waiters"
    steps: list[ScalePoint]
    errors: int = 0
    first_error: str = ""

    # The figure that grows: a release's cost with waiters, a cycle's with resources.
    def value(self, step: ScalePoint) -> float:
        return step.release_ms if self.what == "waiters" else step.cycle_ms

    def ratio(self, step: ScalePoint) -> float:
        base = self.value(self.steps[0]) if self.steps else float("nan")
        return self.value(step) / base if base else float("nan")

    def row(self) -> str:
        return "\n".join(
            f"{step.size:>9} {step.cycles:>6} {step.cycle_ms:>8.2f} {step.release_ms:>10.2f} "
            f"{step.p99_ms:>7.2f} {self.ratio(step):>8.2f}"
            for step in self.steps
        )

    def points(self) -> list[dict]:
        name, unit = (
            ("scale_waiters_release", "ms")
            if self.what == "waiters"
            else ("scale_resources_cycle", "ms")
        )
        return [
            {
                "name": name,
                "clients": 1,
                self.what: step.size,
                "value": round(self.value(step), 3),
                "unit": unit,
                "ratio_to": {"smallest": round(self.ratio(step), 3)},
            }
            for step in self.steps
        ]


def header(what: str, seconds: float) -> str:
    if what == "resources":
        doing = "acquire(by name)+release of a free Calculator as the inventory grows"
        grows = "growth = cycle / cycle at the smallest inventory"
    else:
        doing = "release of a free Calculator while N calls wait for 10 held ones"
        grows = "growth = release / release with no waiter"
    return (
        f"# scale, {what}: {doing}; one client, cycles for {seconds:g} s per point; {grows}\n"
        f"{what:>9} cycles cycle ms release ms  p99 ms   growth"
    )


def measure_cost(stub, size: int, seconds: float) -> ScalePoint:
    """Cycles on `PROBE` for `seconds` (at most MAX_CYCLES) after a few
    uncounted."""
    from broker.v1 import lease_service_pb2

    request = acquire_request(PROBE, "bench-scale")
    cycles, releases = [], []
    clock = time.perf_counter
    deadline = clock() + seconds
    for count in range(WARMUP_CYCLES + MAX_CYCLES):
        began = clock()
        if count >= WARMUP_CYCLES and began >= deadline:
            break
        granted = stub.AcquireLease(request, timeout=RPC_TIMEOUT)
        releasing = clock()
        stub.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=granted.lease.lease_id, secret=granted.secret
            ),
            timeout=RPC_TIMEOUT,
        )
        ended = clock()
        if count >= WARMUP_CYCLES:
            cycles.append(ended - began)
            releases.append(ended - releasing)
    cycles.sort()
    releases.sort()
    return ScalePoint(
        size,
        percentile(cycles, 0.5) * 1e3,
        percentile(releases, 0.5) * 1e3,
        percentile(cycles, 0.99) * 1e3,
        len(cycles),
    )


def create_resources(channel, names: Sequence[str]) -> None:
    """Creates a Calculator per name, IN_FLIGHT calls at a time."""
    from broker.v1 import inventory_service_pb2, inventory_service_pb2_grpc, resource_pb2

    stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
    pending = []
    for name in names:
        resource = resource_pb2.Resource(
            name=name,
            kind=KIND,
            fields={"ip_address": resource_pb2.FieldValue(string_value="127.0.0.1")},
        )
        pending.append(
            stub.CreateResource.future(
                inventory_service_pb2.CreateResourceRequest(resource=resource),
                timeout=RPC_TIMEOUT * 3,
            )
        )
        if len(pending) >= IN_FLIGHT:
            pending.pop(0).result()
    for future in pending:
        future.result()


def run_resources(broker: Broker, seconds: float, counts: Sequence[int] = RESOURCE_COUNTS):
    """The resources points on `broker`, which has `PROBE` seeded."""
    import grpc

    from broker.v1 import lease_service_pb2_grpc

    steps: list[ScalePoint] = []
    with grpc.insecure_channel(broker.address, options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        made = 1  # PROBE
        for count in counts:
            create_resources(channel, [f"scale-{i:05d}" for i in range(made, count)])
            made = max(made, count)
            steps.append(measure_cost(stub, count, seconds))
    return ScaleResult("resources", steps)


# ----------------------------------------------------------------- waiters


def waiting_client(address: str, conn) -> None:
    """Queues waiting calls on `HELD` when told ("add", n), answers
    ("added", n) once they are sent; cancels them all and exits on "stop"."""
    import asyncio

    import grpc

    from broker.v1 import lease_service_pb2_grpc

    async def main() -> None:
        channels = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            for _ in range(WAITER_CHANNELS)
        ]
        stubs = [lease_service_pb2_grpc.LeaseServiceStub(channel) for channel in channels]
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT)
        calls = []
        loop = asyncio.get_running_loop()
        conn.send(("ready", 0))
        while True:
            command, count = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            for _ in range(count):
                index = len(calls)
                request = acquire_request(
                    HELD[index % len(HELD)], f"bench-waiter-{index}", max_wait=WAIT_SECONDS
                )
                calls.append(
                    stubs[index % len(stubs)].AcquireLease(request, timeout=WAIT_SECONDS + 10)
                )
            conn.send(("added", len(calls)))
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()

    try:
        asyncio.run(main())
    finally:
        conn.close()


def count_waiters(stub) -> int:
    from broker.v1 import lease_service_pb2

    total, token = 0, ""
    while True:
        page = stub.ListWaiters(
            lease_service_pb2.ListWaitersRequest(page_size=1000, page_token=token),
            timeout=RPC_TIMEOUT,
        )
        total += len(page.waiters)
        token = page.next_page_token
        if not token:
            return total


class Waiters:
    """A client process holding waiting calls on `broker` (HELD must be held)."""

    def __init__(self, broker: Broker, stub) -> None:
        self.stub = stub
        self.context = multiprocessing.get_context("spawn")
        self.conn, theirs = self.context.Pipe()
        self.process = self.context.Process(
            target=waiting_client, args=(broker.address, theirs), daemon=True
        )
        self.process.start()
        theirs.close()
        self.expect("ready")

    def expect(self, what: str) -> int:
        if not self.conn.poll(START_TIMEOUT):
            raise RuntimeError(f"the waiting client sent no {what!r} in {START_TIMEOUT:g} s")
        message, count = self.conn.recv()
        if message != what:
            raise RuntimeError(f"the waiting client said {message!r}, not {what!r}")
        return count

    def grow_to(self, count: int) -> None:
        """Returns once the broker lists `count` waiters."""
        self.conn.send(("add", max(0, count - count_waiters(self.stub))))
        self.expect("added")
        deadline = time.monotonic() + START_TIMEOUT
        while (listed := count_waiters(self.stub)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{listed} of {count} waiters queued in {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        try:
            self.conn.send(("stop", 0))
            self.process.join(5)
        except OSError:
            pass
        stop_processes([self.process])
        self.conn.close()


def with_waiters(broker: Broker, body: Callable) -> object:
    """Holds HELD, starts the waiting client, returns `body(stub, waiters)`;
    stops the client by its pid whatever happens."""
    import grpc

    from broker.v1 import lease_service_pb2_grpc

    with grpc.insecure_channel(broker.address, options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        for name in HELD:
            stub.AcquireLease(acquire_request(name, "bench-holder"), timeout=RPC_TIMEOUT)
        waiters = Waiters(broker, stub)
        try:
            return body(stub, waiters)
        finally:
            waiters.stop()


def run_waiters(broker: Broker, seconds: float, counts: Sequence[int] = WAITER_COUNTS):
    """The waiters points on `broker`, which has `PROBE` and `HELD` seeded."""

    def body(stub, waiters: Waiters) -> ScaleResult:
        steps = []
        for count in counts:
            waiters.grow_to(count)
            steps.append(measure_cost(stub, count, seconds))
        return ScaleResult("waiters", steps)

    return with_waiters(broker, body)


# ------------------------------------------------------------------ memory


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@dataclasses.dataclass
class MemoryResult:
    waiters: int
    before_kib: int
    after_kib: int
    errors: int = 0
    first_error: str = ""

    @property
    def per_waiter_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.waiters

    def row(self) -> str:
        return (
            f"{self.waiters:>7} {self.before_kib / 1024:>10.1f} {self.after_kib / 1024:>9.1f} "
            f"{self.per_waiter_kib:>12.2f}"
        )

    def points(self) -> list[dict]:
        return [
            {
                "name": "memory_per_waiter",
                "clients": self.waiters,
                "waiters": self.waiters,
                "value": round(self.per_waiter_kib, 3),
                "unit": "KiB",
            }
        ]


MEMORY_HEADER = (
    f"# memory: the broker's VmRSS (/proc/<pid>/status) before and after {MEMORY_WAITERS} "
    "waiting AcquireLease calls queue for 10 held Calculators\n"
    "waiters RSS MiB 0 RSS MiB N KiB / waiter"
)


def run_memory(broker: Broker, waiting: int = MEMORY_WAITERS) -> MemoryResult:
    """Memory per waiting call on `broker` (one process), which has HELD seeded."""
    pid = broker.pids[0]

    def body(stub, waiters: Waiters) -> MemoryResult:
        time.sleep(0.5)  # let start-up allocations settle
        before = rss_kib(pid)
        waiters.grow_to(waiting)
        time.sleep(0.5)
        return MemoryResult(waiting, before, rss_kib(pid))

    return with_waiters(broker, body)
