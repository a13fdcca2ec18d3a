"""The web console's cost: a hundred open live pages on one broker while a
client runs lease cycles.

First the throughput points' cycle (`bench.throughput.run_point`, one
client) runs alone for a warm-up and `--duration` seconds. Then `--pages`
live pages (100 by default) are opened from one spawned process (aiohttp,
one connection each, as a hundred browser tabs would), each following the
inventory, the leases and the event log (`/live?topics=resources,leases,
events`), and ready once it has the message of one more resource created
for that. The broker's CPU is read while the pages are open and nothing
changes (the idle cost: no page polls), then the same cycle runs again.

Reported: cycles/s and the broker's CPU seconds per second (user+system,
from /proc/<pid>/stat) without and with the pages, and their ratios; the
idle CPU with the pages open; the messages delivered to all pages per
second, and per page. Every cycle is a grant and a release of one resource,
so each page is sent two resource messages, two lease messages and two
events per cycle, all made from one read per batch of events.

    .venv/bin/python -m bench --only console
    .venv/bin/python -m bench --only console --pages 200 --duration 5
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import queue
import time
from collections.abc import Sequence

from bench import throughput
from bench.broker_process import START_TIMEOUT, Broker, seed, stop_processes

IDLE_SECONDS = 3.0
READY_RESOURCE = "bench-console-ready"
TOPICS = "resources,leases,events"


async def follow_pages(web_address: str, count: int, ready, stop, counts) -> None:
    """`count` live pages, counting each page's messages in the shared
    array `counts`, until `stop` is set."""
    import aiohttp

    readied = [asyncio.Event() for _ in range(count)]

    async def page(index: int, session: aiohttp.ClientSession) -> None:
        url = f"http://{web_address}/live?topics={TOPICS}"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as answer:
            tail = b""
            async for chunk in answer.content.iter_any():
                seen = tail + chunk
                counts[index] += seen.count(b"\nevent: ") - tail.count(b"\nevent: ")
                if not readied[index].is_set() and READY_RESOURCE.encode() in seen:
                    readied[index].set()
                tail = seen[-64:]

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(page(i, session)) for i in range(count)]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(event.wait() for event in readied)), START_TIMEOUT
            )
            ready.put(count)
            while not stop.value:
                await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def pages_process(web_address: str, count: int, ready, stop, counts) -> None:
    asyncio.run(follow_pages(web_address, count, ready, stop, counts))


@dataclasses.dataclass
class ConsoleResult:
    pages: int
    alone: throughput.PointResult
    driver: throughput.PointResult
    idle_cpu: float  # broker CPU s/s with the pages open and nothing changing
    messages: int  # delivered to all pages from the driver's start until 1 s after
    counted_for: float  # seconds that took
    errors: int = 0
    first_error: str = ""

    @property
    def cycles_ratio(self) -> float:
        return self.driver.rate / self.alone.rate if self.alone.rate else float("nan")

    @property
    def cpu_ratio(self) -> float:
        return self.driver.server_cpu / self.alone.server_cpu if self.alone.server_cpu else 0.0

    def row(self) -> str:
        per_second = self.messages / self.counted_for
        return (
            f"{TABLE_HEADER}\n"
            f"{self.pages:>5} {self.alone.rate:>14.0f} {self.driver.rate:>14.0f} "
            f"{self.cycles_ratio:>6.3f} {self.alone.server_cpu:>10.2f} "
            f"{self.driver.server_cpu:>10.2f} {self.cpu_ratio:>6.2f} {self.idle_cpu:>8.3f} "
            f"{per_second:>10.0f} {per_second / self.pages:>8.1f}"
        )

    def points(self) -> list[dict]:
        rows = (
            ("console_broker_cpu_without_pages", round(self.alone.server_cpu, 3), "cpu s/s"),
            ("console_broker_cpu_with_pages", round(self.driver.server_cpu, 3), "cpu s/s"),
            ("console_broker_cpu_idle_with_pages", round(self.idle_cpu, 4), "cpu s/s"),
            ("console_cycles_ratio_with_without", round(self.cycles_ratio, 3), "ratio"),
            ("console_messages_delivered", round(self.messages / self.counted_for, 1), "msg/s"),
        )
        return [
            {"name": name, "clients": self.pages, "value": value, "unit": unit}
            for name, value, unit in rows
        ]


TABLE_HEADER = (
    "pages cycles/s alone cycles/s pages  ratio  cpu alone  cpu pages  ratio idle cpu "
    "messages/s per page"
)


def header(pages: int, duration: float, warmup: float) -> str:
    return (
        f"# console: 1 client runs acquire+release for {duration:g} s after {warmup:g} s "
        f"warm-up, alone, then with {pages} live console pages open ({TOPICS}); broker CPU "
        f"in s/s; idle cpu: with the pages open and no change for {IDLE_SECONDS:g} s"
    )


def run_console(
    broker: Broker, names: Sequence[str], pages: int, *, duration: float, warmup: float
) -> ConsoleResult:
    alone = throughput.run_point(
        broker, names, 1, duration=duration, warmup=warmup, max_processes=1
    )
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    stop = context.Value("b", 0, lock=False)
    counts = context.Array("q", pages, lock=False)
    member = context.Process(
        target=pages_process,
        args=(broker.web_addresses[0], pages, ready, stop, counts),
        daemon=True,
    )
    try:
        member.start()
        # Each page is ready once it has this resource's message.
        deadline = time.monotonic() + START_TIMEOUT * 2
        while True:
            seed(broker.address, [f"{READY_RESOURCE}-{time.monotonic_ns()}"], broker.token)
            try:
                ready.get(timeout=1.0)
                break
            except queue.Empty:
                if time.monotonic() > deadline or not member.is_alive():
                    raise RuntimeError(f"the {pages} live pages were not open in time") from None
        began, cpu_began = time.monotonic(), broker.cpu_seconds()
        time.sleep(IDLE_SECONDS)
        idle_cpu = (broker.cpu_seconds() - cpu_began) / (time.monotonic() - began)
        before, counted_from = sum(counts), time.monotonic()
        driver = throughput.run_point(
            broker, names, 1, duration=duration, warmup=warmup, max_processes=1
        )
        time.sleep(1.0)  # the last cycles' messages reach the pages
        messages = sum(counts) - before
        counted_for = time.monotonic() - counted_from
        stop.value = 1
        member.join(START_TIMEOUT)
    finally:
        stop_processes([member])
    return ConsoleResult(
        pages=pages,
        alone=alone,
        driver=driver,
        idle_cpu=idle_cpu,
        messages=messages,
        counted_for=counted_for,
        errors=alone.errors + driver.errors,
        first_error=alone.first_error or driver.first_error,
    )
