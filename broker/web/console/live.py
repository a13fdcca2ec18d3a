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
import secrets
from collections import OrderedDict, deque
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
# Seconds a page's changes gather after each write before the next one.
COALESCE_SECONDS = 0.1
# What a page's browser waits before reconnecting, in milliseconds.
RETRY_MS = 2000
# Seconds the subscription outlives the last page (a page reloading, or
# the next one opened, finds it still there).
LINGER_SECONDS = 60.0

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
    # What it is the newest state of (a resource, a lease, the queue): a
    # page not yet sent an earlier message of the same key is sent only
    # this one. Empty for a message every page must get (an event).
    key: str = ""
    # As sent: made once, whatever the number of pages.
    wire: bytes = b""


class Page:
    """One open live page: what it follows and may see, and what it has not
    been sent yet."""

    def __init__(self, topics: frozenset[str], groups: tuple[str, ...] | None, resource: str = ""):
        self.topics = topics
        self.groups = groups
        self.resource = resource
        # Unsent messages in order, by key (an event's own number).
        self.pending: OrderedDict[str, Message] = OrderedDict()
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
        key = message.key or str(message.number)
        if self.pending.pop(key, None) is None and len(self.pending) >= PAGE_BUFFER:
            self.cut_off = True
        else:
            self.pending[key] = message
        self.ready.set()


class LiveHub:
    """The pages of this broker and the one subscription that feeds them,
    on the server's event loop."""

    def __init__(self, source: Source):
        self._source = source
        # Names this hub in the messages' ids: a page that reconnects with
        # another hub's id (another broker's, or before a restart) reloads.
        self.id = secrets.token_hex(4)
        self.linger_seconds = LINGER_SECONDS
        self._linger: asyncio.TimerHandle | None = None
        # Set once the subscription follows the events from the newest on.
        self._started = asyncio.Event()
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
        return self._number

    @property
    def cursor(self) -> str:
        """The id of the newest message, for a page just rendered."""
        return f"{self.id}.{self._number}"

    @property
    def following(self) -> bool:
        return self._follower is not None

    async def started(self) -> None:
        await self._started.wait()

    def after(self, cursor: str) -> int | None:
        """The message number a page's cursor names; -1 for one of another
        hub (the page must reload); None for none."""
        if not cursor:
            return None
        hub, _, number = cursor.rpartition(".")
        if hub != self.id or not number.isdigit():
            return -1
        return int(number)

    def open(self, page: Page, after: int | None) -> bool:
        """Adds a page, first handing it the kept messages after `after`;
        False when it missed more than is kept (it should reload)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
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
        if not self._pages and self._follower is not None and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.linger_seconds, self._idle)

    def _idle(self) -> None:
        """No page came back: the subscription ends, and what was kept for
        reconnecting pages goes (they reload)."""
        self._linger = None
        if self._pages or self._follower is None:
            return
        self._follower.cancel()
        self._follower = None
        self._started.clear()
        self._kept.clear()

    async def stop(self) -> None:
        """Ends every live connection (their browsers reconnect to another
        broker or once this one is back) and the subscription."""
        for page in list(self._pages):
            page.cut_off = True
            page.ready.set()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for task in (self._follower, self._queue_reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._follower = self._queue_reader = None
        self._started.clear()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _publish(
        self,
        topic: str,
        kind: str,
        data: dict,
        group: str | None,
        resource: str = "",
        key: str = "",
    ) -> None:
        self._number += 1
        text = json.dumps(data, ensure_ascii=False)
        wire = f"id: {self.id}.{self._number}\nevent: {kind}\ndata: {text}\n\n".encode()
        message = Message(self._number, topic, kind, text, group, resource, key, wire)
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
                self._started.set()
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
                gone = {"name": name}
                self._publish("resources", "resource-gone", gone, None, name, "r:" + name)
                continue
            row = resource_row(resource)
            if resource.lease_ids and resource.lease_ids[0] in holding:
                row["lease"] = holding[resource.lease_ids[0]]
            self._publish("resources", "resource", row, resource.group, name, "r:" + name)
        for event in batch:
            if event.type == event_pb2.EVENT_TYPE_RESOURCE_DELETED:
                gone, name = {"name": event.resource}, event.resource
                self._publish("resources", "resource-gone", gone, None, name, "r:" + name)
        for lease in leases:
            group = lease.grants[0].resource.group if lease.grants else ""
            self._publish("leases", "lease", lease_row(lease), group, key="l:" + lease.lease_id)

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
            rows = {"waiters": [waiter_row(w) for w in waiters]}
            self._publish("queue", "queue", rows, "", key="queue")


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
    if not hub.open(page, after):
        await response.prepare(request)
        await response.write(f"id: {hub.cursor}\nevent: reload\ndata: {{}}\n\n".encode())
        return response
    try:
        # The page is told it is live only once its changes will reach it.
        await hub.started()
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
    except BaseException:
        hub.close(page)
        raise
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
            # What piled up since the last write, in one write.
            batch = b"".join(message.wire for message in page.pending.values())
            page.pending.clear()
            if batch:
                await response.write(batch)
                # The next changes gather for a moment, and what changed
                # twice in it is sent once.
                await asyncio.sleep(COALESCE_SECONDS)
    except ConnectionResetError:
        pass
    finally:
        hub.close(page)
    return response
