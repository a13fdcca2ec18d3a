"""Live pages: one subscription per broker, fanned out to every open page
as server-sent events.

The hub follows the broker's events (one watcher of its feed, however many
pages are open). For each batch of events it reads what they name (the
resources and leases) in one domain call, turns each into the message a
page shows, serialises it once, and hands it to the pages that want it and
may see it. The queue records no events: when it changes, the waiters are
read once, and only while a queue page is open. Pages never poll; they
patch themselves from what they are sent (`static/console.js`).

A page that reads too slowly for its buffer is cut off, and the browser
reconnects with the id of the last message it had: the hub replays what
it still keeps after that id, or tells the page to reload when it keeps
too little. A connection also ends after `RECONNECT_SECONDS`, so that the
reconnection checks the visitor's token again: revoking a token ends its
live pages too."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from typing import Protocol

from aiohttp import web

from broker.domain.inventory import visible
from broker.v1 import event_pb2, lease_pb2, resource_pb2
from broker.web.console.display import (
    event_row,
    lease_row,
    requirement_text,
    resource_row,
    time_text,
)

log = logging.getLogger(__name__)

# Messages kept for pages that reconnect.
REPLAY_KEPT = 512
# Messages a page may have unsent before it is cut off.
PAGE_BUFFER = 256
# Seconds a live connection lasts before the browser reconnects to it.
RECONNECT_SECONDS = 300.0
# Seconds between keep-alive comments on an idle connection.
KEEPALIVE_SECONDS = 25.0
# What a page's browser waits before reconnecting, in milliseconds.
RETRY_MS = 2000

TOPICS = frozenset({"resources", "leases", "queue", "events"})
_LEASE_EVENTS = {
    event_pb2.EVENT_TYPE_LEASE_GRANTED,
    event_pb2.EVENT_TYPE_LEASE_RELEASED,
    event_pb2.EVENT_TYPE_LEASE_EXPIRED,
    event_pb2.EVENT_TYPE_LEASE_REVOKED,
    event_pb2.EVENT_TYPE_LEASE_RENEWED,
    event_pb2.EVENT_TYPE_SESSION_LOST,
}


class Source(Protocol):
    async def newest(self) -> int: ...

    def follow(self, after: int) -> AsyncIterator[event_pb2.Event]: ...

    async def read(
        self, names: Collection[str], lease_ids: Collection[str]
    ) -> tuple[dict[str, resource_pb2.Resource | None], list[lease_pb2.Lease]]: ...

    async def waiters(self) -> list[lease_pb2.Waiter]: ...

    def listen_queue(self, listener: Callable[[], None]) -> Callable[[], None]: ...


@dataclasses.dataclass(frozen=True)
class Message:
    """One message for the pages, serialised once."""

    number: int
    topic: str
    kind: str
    data: str
    # The group of the resource it shows; None: only pages that see every
    # group get it (a resource already gone).
    group: str | None
    resource: str = ""

    def wire(self) -> bytes:
        return f"id: {self.number}\nevent: {self.kind}\ndata: {self.data}\n\n".encode()


class Page:
    """One open live page: what it follows and may see, and what it has not
    been sent yet."""

    def __init__(self, topics: frozenset[str], groups: tuple[str, ...] | None, resource: str = ""):
        self.topics = topics
        self.groups = groups
        self.resource = resource
        self.pending: deque[Message] = deque()
        self.ready = asyncio.Event()
        self.cut_off = False

    def wants(self, message: Message) -> bool:
        if message.topic not in self.topics:
            return False
        if self.resource and message.resource != self.resource:
            return False
        if message.group is None:
            return self.groups is None
        return visible(message.group, self.groups)

    def offer(self, message: Message) -> None:
        if self.cut_off or not self.wants(message):
            return
        if len(self.pending) >= PAGE_BUFFER:
            self.cut_off = True
        else:
            self.pending.append(message)
        self.ready.set()


class LiveHub:
    """The pages of this broker and the one subscription that feeds them,
    on the server's event loop."""

    def __init__(self, source: Source):
        self._source = source
        self._pages: set[Page] = set()
        self._kept: deque[Message] = deque(maxlen=REPLAY_KEPT)
        self._number = 0
        self._follower: asyncio.Task | None = None
        self._queue_reader: asyncio.Task | None = None
        self._queue_dirty = False
        self._unlisten: Callable[[], None] | None = None
        # Domain calls made for the pages, to show their cost stays one
        # per batch of events, whatever the number of pages.
        self.reads = 0

    @property
    def pages(self) -> int:
        return len(self._pages)

    @property
    def newest(self) -> int:
        """The number of the newest message, for a page just rendered."""
        return self._number

    def open(self, page: Page, after: int | None) -> bool:
        """Adds a page, first handing it the kept messages after `after`;
        False when it missed more than is kept (it should reload)."""
        if after is not None and after < self._number:
            oldest = self._kept[0].number if self._kept else self._number + 1
            if after + 1 < oldest:
                return False
            for message in self._kept:
                if message.number > after:
                    page.offer(message)
        self._pages.add(page)
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())
        if "queue" in page.topics and self._unlisten is None:
            self._unlisten = self._source.listen_queue(self._queue_changed)
        return True

    def close(self, page: Page) -> None:
        self._pages.discard(page)
        if self._unlisten is not None and not any("queue" in p.topics for p in self._pages):
            self._unlisten()
            self._unlisten = None

    async def stop(self) -> None:
        """Ends every live connection (their browsers reconnect to another
        broker or once this one is back) and the subscription."""
        for page in list(self._pages):
            page.cut_off = True
            page.ready.set()
        for task in (self._follower, self._queue_reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._follower = self._queue_reader = None
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _publish(
        self, topic: str, kind: str, data: dict, group: str | None, resource: str = ""
    ) -> None:
        self._number += 1
        message = Message(
            self._number, topic, kind, json.dumps(data, ensure_ascii=False), group, resource
        )
        self._kept.append(message)
        for page in self._pages:
            page.offer(message)

    async def _follow(self) -> None:
        """Follows the events from the newest, for as long as the broker
        runs; starts over from the newest (pages reload) if it falls
        behind the feed."""
        while True:
            try:
                after = await self._source.newest()
                arrived: asyncio.Queue[event_pb2.Event] = asyncio.Queue()
                reader = asyncio.get_running_loop().create_task(self._take(after, arrived))
                try:
                    while True:
                        batch = [await arrived.get()]
                        while not arrived.empty():
                            batch.append(arrived.get_nowait())
                        await self._show(batch)
                        if reader.done():
                            reader.result()
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("the console's live feed restarts: %s", error)
                self._publish_reload()
                await asyncio.sleep(1.0)

    async def _take(self, after: int, into: asyncio.Queue) -> None:
        async for event in self._source.follow(after):
            into.put_nowait(event)

    def _publish_reload(self) -> None:
        for topic in TOPICS:
            self._publish(topic, "reload", {}, None)

    async def _show(self, batch: list[event_pb2.Event]) -> None:
        names = {
            e.resource
            for e in batch
            if e.resource and e.type != event_pb2.EVENT_TYPE_RESOURCE_DELETED
        }
        lease_ids = {e.lease_id for e in batch if e.lease_id and e.type in _LEASE_EVENTS}
        resources: dict[str, resource_pb2.Resource | None] = {}
        leases: list[lease_pb2.Lease] = []
        if names or lease_ids:
            self.reads += 1
            resources, leases = await self._source.read(names, lease_ids)
        groups = {name: r.group for name, r in resources.items() if r is not None}
        holding = {lease.lease_id: lease_row(lease) for lease in leases}
        for event in batch:
            row = event_row(event)
            self._publish("events", "event", row, groups.get(event.resource), event.resource)
        for name, resource in resources.items():
            if resource is None:
                self._publish("resources", "resource-gone", {"name": name}, None, name)
                continue
            row = resource_row(resource)
            if resource.lease_ids and resource.lease_ids[0] in holding:
                row["lease"] = holding[resource.lease_ids[0]]
            self._publish("resources", "resource", row, resource.group, name)
        for event in batch:
            if event.type == event_pb2.EVENT_TYPE_RESOURCE_DELETED:
                gone = {"name": event.resource}
                self._publish("resources", "resource-gone", gone, None, event.resource)
        for lease in leases:
            group = lease.grants[0].resource.group if lease.grants else ""
            self._publish("leases", "lease", lease_row(lease), group)

    def _queue_changed(self) -> None:
        self._queue_dirty = True
        if self._queue_reader is None or self._queue_reader.done():
            self._queue_reader = asyncio.get_running_loop().create_task(self._read_queue())

    async def _read_queue(self) -> None:
        """Reads the waiters once per change, coalescing the changes that
        come while it reads."""
        while self._queue_dirty:
            self._queue_dirty = False
            self.reads += 1
            try:
                waiters = await self._source.waiters()
            except Exception as error:
                log.warning("the console could not read the queue: %s", error)
                return
            self._publish("queue", "queue", {"waiters": [waiter_row(w) for w in waiters]}, "")


def waiter_row(waiter: lease_pb2.Waiter) -> dict:
    blocked = waiter.blocked_requirement_index
    return {
        "waiter_id": str(waiter.waiter_id),
        "position": waiter.position,
        "holder": waiter.holder,
        "principal": waiter.principal,
        "priority": waiter.priority,
        "requirements": [requirement_text(r) for r in waiter.requirements],
        "blocked": (
            requirement_text(waiter.requirements[blocked])
            if 0 <= blocked < len(waiter.requirements)
            else ""
        ),
        "since": time_text(waiter.enqueue_time),
        "deadline": time_text(waiter.deadline),
    }


async def stream(
    request: web.Request,
    hub: LiveHub,
    page: Page,
    after: int | None,
) -> web.StreamResponse:
    """The page's server-sent events, until it goes away or
    `RECONNECT_SECONDS` pass."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    if not hub.open(page, after):
        await response.write(f"id: {hub.newest}\nevent: reload\ndata: {{}}\n\n".encode())
        return response
    loop = asyncio.get_running_loop()
    ends = loop.time() + RECONNECT_SECONDS
    try:
        while not page.cut_off:
            left = ends - loop.time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(min(left, KEEPALIVE_SECONDS)):
                    await page.ready.wait()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            page.ready.clear()
            while page.pending:
                await response.write(page.pending.popleft().wire())
    except ConnectionResetError:
        pass
    finally:
        hub.close(page)
    return response
