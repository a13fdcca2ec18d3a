"""Event fan-out: many `WatchEvents` streams on one broker while a client
runs lease cycles.

First the throughput points' cycle (`bench.throughput.run_point`, one
client) runs alone for a warm-up and `--duration` seconds, for comparison.
Then `--watchers` streams (100 by default) are opened from `PROCESSES`
spawned processes, each running them on one asyncio channel (streams on one
HTTP/2 connection are cheap; a thread per stream would not be). Each watches
every event after those stored so far, and is ready once it has the event of
one more resource created for that. Then the same cycle runs again; after
it, the bench lists the events the broker stored and waits (at most
`DRAIN_SECONDS`) until every watcher has the newest one.

Counting only events whose time falls in the measured window: events/s the
broker produced, events/s delivered to all watchers together (ideally
watchers times produced), and each delivery's lag (arrival time less the
event's time, which is taken just before its transaction commits; one
machine, one clock); the slowest watcher (largest lag) is shown with its
p50, p99 and largest lag, and how long after the window's last event every
watcher had the newest event. The broker's CPU seconds per second (user+system, from
/proc/<pid>/stat of the subprocess) are given over the window and over the
whole run until the last watcher caught up. A watcher that falls more than
`events.watch_buffer` (1000) events behind is cut off with
RESOURCE_EXHAUSTED: that is counted as an error. Last, the cycles/s with the
watchers as a ratio of those without.

    .venv/bin/python -m bench --only fanout --databases sqlite
    .venv/bin/python -m bench --only fanout --watchers 200 --duration 5
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import multiprocessing
import os
import queue
import time
from collections.abc import Sequence

from bench import throughput
from bench.broker_process import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT,
    START_TIMEOUT,
    Broker,
    percentile,
    seed,
    stop_processes,
)

PROCESSES = 2  # watcher processes
DRAIN_SECONDS = 15.0  # longest wait for the watchers to catch up
LIST_PAGE = 1000
# Created once the streams are open: its event tells each stream is ready.
READY_RESOURCE = "bench-fanout-ready"


@dataclasses.dataclass
class Watch:
    """What one stream received: each event's time and its arrival's lag."""

    times: array.array = dataclasses.field(default_factory=lambda: array.array("d"))
    lags: array.array = dataclasses.field(default_factory=lambda: array.array("d"))
    last: int = 0  # the newest sequence received
    last_arrival: float = 0.0  # when it arrived (wall clock)
    error: str = ""


async def watch(stub, request, tally: Watch, first: asyncio.Event) -> None:
    import grpc

    try:
        async for response in stub.WatchEvents(request):
            arrived = time.time()
            event = response.event
            at = event.time.seconds + event.time.nanos * 1e-9
            tally.times.append(at)
            tally.lags.append(arrived - at)
            tally.last, tally.last_arrival = event.sequence, arrived
            first.set()
    except grpc.aio.AioRpcError as error:
        tally.error = f"{error.code().name}: {error.details()}"
        first.set()


async def watch_all(address: str, count: int, after: int, ready, final, results) -> None:
    """`count` streams on one channel of the events after sequence `after`;
    reports once each has sequence `final.value` (set by the bench after the
    cycles) or the drain ends."""
    import grpc

    from broker.v1 import event_service_pb2, event_service_pb2_grpc

    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        request = event_service_pb2.WatchEventsRequest(after_sequence=after)
        tallies = [Watch() for _ in range(count)]
        firsts = [asyncio.Event() for _ in range(count)]
        tasks = [
            asyncio.create_task(watch(stub, request, tally, first))
            for tally, first in zip(tallies, firsts, strict=True)
        ]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(first.wait() for first in firsts)), START_TIMEOUT
            )
            ready.put(os.getpid())
            drain_end = None
            while True:
                await asyncio.sleep(0.02)
                if final.value <= 0:
                    continue
                drain_end = drain_end or time.monotonic() + DRAIN_SECONDS
                done = all(t.last >= final.value or t.error for t in tallies)
                if done or time.monotonic() >= drain_end:
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        results.put(
            [
                {
                    "times": t.times.tobytes(),
                    "lags": t.lags.tobytes(),
                    "last": t.last,
                    "last_arrival": t.last_arrival,
                    "error": t.error,
                }
                for t in tallies
            ]
        )


def watcher_process(address: str, count: int, after: int, ready, final, results) -> None:
    asyncio.run(watch_all(address, count, after, ready, final, results))


def stored_events(address: str) -> tuple[list[float], int]:
    """Every stored event's time, and the newest sequence."""
    import grpc

    from broker.v1 import event_service_pb2, event_service_pb2_grpc

    times, newest, token = [], 0, ""
    with grpc.insecure_channel(address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        while True:
            page = stub.ListEvents(
                event_service_pb2.ListEventsRequest(page_size=LIST_PAGE, page_token=token),
                timeout=RPC_TIMEOUT,
            )
            for event in page.events:
                times.append(event.time.seconds + event.time.nanos * 1e-9)
                newest = max(newest, event.sequence)
            token = page.next_page_token
            if not token:
                return times, newest


@dataclasses.dataclass
class FanoutResult:
    watchers: int
    alone: throughput.PointResult  # the cycles without watchers
    driver: throughput.PointResult  # the cycles with them
    produced: int  # events stored whose time is in the window
    delivered: int  # of those, deliveries to all watchers together
    lags: list[float]  # every delivery's lag in the window, sorted
    slowest: list[float]  # the slowest watcher's lags in the window, sorted
    caught_up: float  # s from the newest event's time until every watcher had it
    cpu_window: float  # broker CPU s/s during the window
    cpu_run: float  # broker CPU s/s from the cycles' start until caught up
    behind: int  # watchers that never got the newest event
    errors: int
    first_error: str

    @property
    def duration(self) -> float:
        return self.driver.duration

    @property
    def cycles_ratio(self) -> float:
        return self.driver.rate / self.alone.rate if self.alone.rate else float("nan")

    def row(self) -> str:
        """The table's header, then this result."""
        ms = 1e3
        produced, delivered = self.produced / self.duration, self.delivered / self.duration
        return (
            TABLE_HEADER
            + "\n"
            + (
                f"{self.watchers:>8} {self.driver.rate:>8.0f} {produced:>10.0f} {delivered:>11.0f} "
                f"{delivered / produced if produced else float('nan'):>6.1f} "
                f"{percentile(self.lags, 0.5) * ms:>7.1f} {percentile(self.lags, 0.99) * ms:>7.1f} "
                f"{percentile(self.slowest, 0.5) * ms:>7.1f} "
                f"{percentile(self.slowest, 0.99) * ms:>7.1f} "
                f"{percentile(self.slowest, 1.0) * ms:>7.1f} "
                f"{self.cpu_window:>7.2f} {self.cpu_run:>7.2f}"
                f"\n         every watcher had the newest event {self.caught_up:.3f} s after "
                f"its time; watchers short of it: {self.behind}; errors: {self.errors}"
                f"\n         without watchers: {self.alone.rate:.0f} cycles/s, broker CPU "
                f"{self.alone.server_cpu:.2f} s/s; cycles/s with/without: {self.cycles_ratio:.3f}"
            )
        )

    def points(self) -> list[dict]:
        rows = (
            ("fanout_events_produced", round(self.produced / self.duration, 1), "events/s"),
            ("fanout_events_delivered", round(self.delivered / self.duration, 1), "events/s"),
            ("fanout_lag_p99", round(percentile(self.lags, 0.99) * 1e3, 2), "ms"),
            ("fanout_slowest_lag_max", round(percentile(self.slowest, 1.0) * 1e3, 2), "ms"),
            ("fanout_broker_cpu", round(self.cpu_run, 3), "cpu s/s"),
            ("fanout_cycles_ratio_with_without", round(self.cycles_ratio, 3), "ratio"),
        )
        return [
            {"name": name + self.driver.variant, "clients": self.watchers, "value": v, "unit": u}
            for name, v, u in rows
        ]


TABLE_HEADER = (
    "watchers cycles/s produced/s delivered/s  ratio lag p50 lag p99  slow50  slow99 slowmax "
    "cpu/s w cpu/s r"
)


def header(watchers: int, duration: float, warmup: float, where: str) -> str:
    return (
        f"# fanout{where}: 1 client runs acquire+release for {duration:g} s after {warmup:g} s "
        f"warm-up, alone, then again with {watchers} WatchEvents streams open from "
        f"{PROCESSES} processes (asyncio channels); lags in ms, of every delivery, then of "
        f"the slowest watcher (slow*); broker CPU in s/s over the window (w) and over the run "
        f"until every watcher caught up (r)"
    )


def run_fanout(
    broker: Broker,
    names: Sequence[str],
    watchers: int,
    *,
    duration: float,
    warmup: float,
    variant: str = "",
) -> FanoutResult:
    """Opens the streams, runs the cycles, waits for the streams to catch
    up; see the module."""
    alone = throughput.run_point(
        broker, names, 1, duration=duration, warmup=warmup, max_processes=1, variant=variant
    )
    _, after = stored_events(broker.address)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    final = context.Value("q", 0, lock=False)
    shares = [watchers // PROCESSES + (i < watchers % PROCESSES) for i in range(PROCESSES)]
    members = [
        context.Process(
            target=watcher_process,
            args=(broker.address, share, after, ready, final, results),
            daemon=True,
        )
        for share in shares
        if share
    ]
    try:
        for member in members:
            member.start()
        seed(broker.address, [READY_RESOURCE], broker.token)
        deadline = time.monotonic() + START_TIMEOUT * 2
        for count in range(len(members)):
            try:
                ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"{count} of {len(members)} watcher processes had their streams open"
                ) from None
        began, cpu_began = time.monotonic(), broker.cpu_seconds()
        driver = throughput.run_point(
            broker, names, 1, duration=duration, warmup=warmup, max_processes=1, variant=variant
        )
        times, newest = stored_events(broker.address)
        final.value = newest
        watched = []
        for count in range(len(members)):
            try:
                watched.extend(results.get(timeout=DRAIN_SECONDS + START_TIMEOUT))
            except queue.Empty:
                raise RuntimeError(
                    f"{count} of {len(members)} watcher processes reported"
                ) from None
        cpu_run = (broker.cpu_seconds() - cpu_began) / (time.monotonic() - began)
        for member in members:
            member.join(START_TIMEOUT)
    finally:
        stop_processes(members)
    start, end = driver.window
    in_window = [t for t in times if start <= t < end]
    newest_time = max(times, default=end)
    lags, slowest, delivered, behind, errors, first_error = [], [], 0, 0, 0, ""
    caught_up = 0.0
    for tally in watched:
        stamps, delays = array.array("d"), array.array("d")
        stamps.frombytes(tally["times"])
        delays.frombytes(tally["lags"])
        mine = sorted(d for t, d in zip(stamps, delays, strict=True) if start <= t < end)
        delivered += len(mine)
        lags.extend(mine)
        if mine and (not slowest or mine[-1] > slowest[-1]):
            slowest = mine
        if tally["last"] < newest:
            behind += 1
        else:
            caught_up = max(caught_up, tally["last_arrival"] - newest_time)
        if tally["error"]:
            errors += 1
            first_error = first_error or tally["error"]
    return FanoutResult(
        watchers=watchers,
        alone=alone,
        driver=driver,
        produced=len(in_window),
        delivered=delivered,
        lags=sorted(lags),
        slowest=slowest,
        caught_up=caught_up,
        cpu_window=driver.server_cpu,
        cpu_run=cpu_run,
        behind=behind,
        errors=errors + driver.errors,
        first_error=first_error or driver.first_error,
    )
