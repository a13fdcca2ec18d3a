"""Following the audit trail live, for every watcher of this broker at once.

A watch first replays the stored events after its cursor, reading them page
by page as fast as its caller takes them. Once it has caught up it joins the
feed: one reader per broker that, each time it is woken, reads the events
after the newest it has seen (one query, whatever the number of watchers)
and hands each watcher those that pass its filter. It is woken after every
commit of this process that recorded events, by a NOTIFY from the other
brokers on PostgreSQL (`broker.models.event.CHANNEL`), and by a slow safety
poll.

Each watcher has a bounded buffer. One whose caller reads too slowly to keep
up is dropped from the feed when its buffer is full; its call ends with
RESOURCE_EXHAUSTED once its caller has read what was buffered, so a slow
caller never makes the broker hold more, nor slows the others.

Sequences grow in commit order (`broker.models.event`), so a reader that has
seen everything up to N never needs to look below N again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from broker.api.runner import Runner
from broker.domain.errors import LimitExceededError
from broker.domain.events import EventLog, check_filter
from broker.domain.values import EventFilter, EventView

# Events read by one query: of the replay, and of the feed.
READ_BATCH = 500
# Seconds between the feed's reads when nothing woke it: a NOTIFY lost with
# a broken connection costs at most this delay.
SAFETY_POLL = 5.0

log = logging.getLogger(__name__)

EVERY_EVENT = EventFilter()


class _Watcher:
    """One watch that has caught up: what the feed handed it and its caller
    has not read yet, at most `limit` events."""

    def __init__(self, wanted: EventFilter, seen: int, limit: int):
        self.wanted = wanted
        self.seen = seen
        self.limit = limit
        self.pending: deque[EventView] = deque()
        self.overflowed = False
        self.ready = asyncio.Event()

    def offer(self, views: list[EventView]) -> bool:
        """Takes the new events it wants; False when its buffer overflowed."""
        for view in views:
            if view.sequence <= self.seen:
                continue
            self.seen = view.sequence
            if not self.wanted.matches(view):
                continue
            if len(self.pending) >= self.limit:
                self.overflowed = True
                self.ready.set()
                return False
            self.pending.append(view)
            self.ready.set()
        return True


class EventFeed:
    """The watchers of this broker and the one reader that serves them, on
    the server's event loop; `wake` may be called from any thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        events: EventLog,
        run: Runner,
        *,
        buffer: int,
        poll: float = SAFETY_POLL,
    ):
        self._loop = loop
        self.events = events
        self.run = run
        self.buffer = buffer
        # A read never hands a watcher more than its buffer holds at once.
        self._batch = min(READ_BATCH, buffer)
        self.poll = poll
        self._watchers: set[_Watcher] = set()
        self._head = 0
        self._woken = asyncio.Event()
        # What woke the feed: commits of unknown extent, and the newest
        # sequence other wake-ups announced.
        self._unknown = False
        self._announced = 0
        self._task: asyncio.Task | None = None
        # How many reads the feed made: one per wake-up, whatever the watchers.
        self.reads = 0

    def watching(self) -> int:
        """How many watches follow the feed now."""
        return len(self._watchers)

    def wake(self, newest: int) -> None:
        """Events up to sequence `newest` were committed by this process."""
        self._call(self._wake_for, newest)

    def announce(self, newest: list[str]) -> None:
        """Events up to the sequences in `newest` were committed (by any
        broker, NOTIFY payloads); none given means perhaps some."""
        sequences = [int(payload) for payload in newest if payload.isdigit()]
        known = sequences and len(sequences) == len(newest)
        self._call(self._wake_for, max(sequences) if known else None)

    def _wake_for(self, newest: int | None) -> None:
        """Reads again, unless only events the feed has read already were
        announced (checked when it next looks: a read under way may cover
        them)."""
        if newest is None:
            self._unknown = True
        else:
            self._announced = max(self._announced, newest)
        self._woken.set()

    def _call(self, function, *args) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            function(*args)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(function, *args)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def watch(self, wanted: EventFilter, after: int) -> AsyncIterator[EventView]:
        """The events after sequence `after` that pass `wanted`: the stored
        ones, then each new one, until the caller stops (OUT_OF_RANGE for a
        cursor older than retention, RESOURCE_EXHAUSTED for a caller too
        slow to keep up)."""
        check_filter(wanted)
        position = await self.run(self.events.start, after)
        last = position
        while True:
            # Bounded by what the feed has handed out while it has watchers,
            # so that the feed takes over right after it; with none, read to
            # the end and move the feed to where this replay stopped.
            bound = self._head if self._watchers else None
            views = await self.run(self.events.read, wanted, position, READ_BATCH, bound)
            for view in views:
                yield view
                last = position = view.sequence
            if len(views) == READ_BATCH:
                continue
            # Never step back: a filtered replay knows only the last event it
            # passed, and the feed may not have read as far as this replay.
            if bound is not None and self._watchers and self._head == bound:
                position = max(position, bound)
                break
            if bound is None and not self._watchers:
                self._head = max(self._head, position)
                break
        watcher = _Watcher(wanted, position, self.buffer)
        self._watchers.add(watcher)
        self._wake_for(None)
        try:
            while True:
                await watcher.ready.wait()
                watcher.ready.clear()
                while watcher.pending:
                    view = watcher.pending.popleft()
                    yield view
                    last = view.sequence
                if watcher.overflowed:
                    raise LimitExceededError(
                        "events.watch_buffer",
                        f"this watch fell more than {self.buffer} events behind and was cut "
                        f"off; resume with after_sequence {last}",
                    )
        finally:
            self._watchers.discard(watcher)

    async def _follow(self) -> None:
        while True:
            try:
                # Not `wait_for`: on Python 3.11 it can swallow a cancel
                # that comes as the wait ends, and `close` would hang.
                async with asyncio.timeout(self.poll):
                    await self._woken.wait()
                polled = False
            except TimeoutError:
                polled = True
            self._woken.clear()
            if not polled and not self._unknown and self._announced <= self._head:
                continue
            self._unknown = False
            try:
                await self._read_new()
            except Exception as error:
                log.warning("reading new events failed (%s); retrying", error)

    async def _read_new(self) -> None:
        """Hands every watcher the events after the newest handed out."""
        while self._watchers:
            start = self._head
            self.reads += 1
            views = await self.run(self.events.read, EVERY_EVENT, start, self._batch)
            if self._head != start:
                continue  # a replay moved the feed meanwhile: read again from there
            for watcher in list(self._watchers):
                if not watcher.offer(views):
                    self._watchers.discard(watcher)
            if views:
                self._head = views[-1].sequence
            if len(views) < self._batch:
                return
