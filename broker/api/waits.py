"""Waking the calls that wait for a grant, and telling them their place.

A waiting call sleeps until something concerns it; it never looks at the
queue on a short timer of its own. It is woken by:

- its grant. Grants are made by whichever call frees the resources; that
  call's domain transaction names the requests it granted, and the board
  hands each grant to its waiting call (`notify`). On PostgreSQL a grant
  made by another broker is announced by NOTIFY (`announce`, by id only):
  the call then reads its grant.
- its deadline, a timer at it: the request then leaves the queue
  (DEADLINE_EXCEEDED), unless it was granted meanwhile.
- a change of the queue. A transaction that added or ended waiting requests
  reports it once committed (`queue_changed`: in process through
  `Leases.on_queue_changed`, from other brokers by a NOTIFY on the queue
  channel). The board then reads the places of every request followed here
  in one batched domain call (`Leases.wait_positions`), at most one such
  read at a time and one per `REFRESH_SECONDS`, however many changes come.
  A request no longer waiting has its calls read their outcome (a grant
  whose wake-up was missed); a stream whose place moved reads what blocks it
  and is sent its new status.
- the safety poll: every `SAFETY_POLL_SECONDS` the board makes the same
  read, and every stream reads anew what blocks it, so a grant missed by
  every wake-up (a NOTIFY lost while the listener reconnected) is found
  within it.

A waiting call holds little: a small record with the future it is woken by
(whose result says why) and the timer of its deadline; no task of its own.
A call that goes away leaves the queue through a background domain call, so
the event loop never waits on the database for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable

import peewee

from broker.api.runner import Runner
from broker.domain.errors import UnavailableError
from broker.domain.leasing import Leases
from broker.domain.values import Blocked, Granted, Waiting

# The board's own look at every request it follows, for what every wake-up
# missed; read when armed, so a test may lengthen it.
SAFETY_POLL_SECONDS = 30.0
# The least time between two reads of the places of the requests followed.
REFRESH_SECONDS = 0.5
# Tries of a departure whose transaction met a transient database failure,
# the first retry this many seconds later, each next one twice as late.
DEPARTURE_ATTEMPTS = 6
DEPARTURE_BACKOFF = 0.25

log = logging.getLogger(__name__)


# Grants made here for calls not (yet) waiting here, kept for a call that
# registers just after its request was granted; the oldest go first.
UNCLAIMED_LIMIT = 4096

# Why a waiting call was woken, the weightier the higher (a call woken twice
# before it runs acts on the weightier): its place moved (streams only), its
# request may no longer wait, its grant was handed to it, its deadline came.
_MOVED, _READ, _HANDED, _DEADLINE = 1, 2, 3, 4


class _Call:
    """One waiting call: whether it streams its status, the place last sent
    to it, and what wakes it (or why it is to wake at once)."""

    __slots__ = ("pending", "position", "stream", "waker")

    def __init__(self, stream: bool, position: int) -> None:
        self.stream = stream
        self.position = position
        self.waker: asyncio.Future[int] | None = None
        self.pending = 0

    def wake(self, why: int) -> None:
        if self.waker is not None and not self.waker.done():
            self.waker.set_result(why)
        else:  # busy reading its status: it looks again once done
            self.pending = max(self.pending, why)


class WaitBoard:
    """The calls waiting on this broker, by waiter id (a retried call
    follows the same request as the call it replaces), owned by the
    server's event loop; `notify`, `announce` and `queue_changed` may be
    called from any thread. A grant made on this broker is handed to the
    waiting call as is; one announced by another broker names only the
    waiter, whose call then reads its grant."""

    def __init__(self, loop: asyncio.AbstractEventLoop, leases: Leases, run: Runner) -> None:
        self._loop = loop
        self._leases = leases
        self._run = run
        self._calls: dict[int, list[_Call]] = {}
        self._results: dict[int, Granted] = {}
        self._unclaimed: OrderedDict[int, Granted] = OrderedDict()
        self._leaving: set[asyncio.Future] = set()
        # The reads of the places: one under way at most, the next one due.
        self._refreshing: asyncio.Future | None = None
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._last_refresh = -REFRESH_SECONDS
        self._changed_since = False
        self._full = False
        self._safety: asyncio.TimerHandle | None = None
        # Told on the loop when the queue changed (the console's live pages).
        self._listeners: list[Callable[[], None]] = []

    def waiting_calls(self) -> int:
        """How many waiting requests have a call waiting on this broker."""
        return len(self._calls)

    def notify(self, granted: dict[int, Granted]) -> None:
        """Grants made by this broker's transactions."""
        self._call(self._hand, dict(granted))

    def announce(self, waiter_ids: list[int]) -> None:
        """Grants announced by any broker (by id only)."""
        self._call(self._mark_read, list(waiter_ids))

    def queue_changed(self, payloads: object = None) -> None:
        """Waiting requests came or left, on this broker or another (the
        payloads of the queue channel's notes say nothing more)."""
        self._call(self._changed, False)

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Calls `listener` on the loop whenever the queue changed, until the
        function returned is called."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _call(self, function, argument) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            function(argument)
        else:
            self._loop.call_soon_threadsafe(function, argument)

    def _hand(self, granted: dict[int, Granted]) -> None:
        for waiter_id, grant in granted.items():
            calls = self._calls.get(waiter_id)
            if calls is not None:
                self._results[waiter_id] = grant
                for call in calls:
                    call.wake(_HANDED)
            else:
                self._unclaimed[waiter_id] = grant
                while len(self._unclaimed) > UNCLAIMED_LIMIT:
                    self._unclaimed.popitem(last=False)

    def _mark_read(self, waiter_ids: list[int]) -> None:
        for waiter_id in waiter_ids:
            for call in self._calls.get(waiter_id, ()):
                call.wake(_READ)

    async def follow(
        self, waiting: Waiting, stream: bool
    ) -> AsyncGenerator[Granted | Waiting, None]:
        """Yields the grant; before it, for a `stream`, the request's status
        whenever its place or what blocks it changes. Its wait ends at its
        deadline (DEADLINE_EXCEEDED, holding nothing); if the caller goes
        away before the grant is delivered, the request leaves the queue (or
        its fresh lease is released)."""
        waiter_id, deadline = waiting.waiter_id, waiting.deadline
        # What was last sent: only a stream is sent what blocks it.
        last: tuple[int, Blocked | None] = (waiting.position, waiting.blocked if stream else None)
        del waiting
        call = _Call(stream, last[0])
        # A retry (same request id) follows the same waiter as the call it
        # replaces: the request leaves the queue only when its last caller does.
        calls = self._calls.setdefault(waiter_id, [])
        calls.append(call)
        # What happened between the acquire's commit and now (a grant
        # announced by another broker, a move) is caught by the next read.
        self._changed(False)
        self._arm_safety_poll()
        delivered = False
        try:
            early = self._unclaimed.pop(waiter_id, None)
            if early is not None:
                delivered = True
                yield early
                return
            while True:
                why = await self._woken(call, deadline)
                handed = self._results.get(waiter_id)
                if handed is not None:
                    delivered = True
                    yield handed
                    return
                if why == _DEADLINE or time.time() >= deadline:
                    granted = await self._run(self._leases.abandon, waiter_id, True)
                    if granted is not None:
                        delivered = True
                        yield granted
                        return
                    why = _READ  # raises DEADLINE_EXCEEDED
                # A moved stream knows its place: only what blocks it is read.
                known = call.position if why == _MOVED else None
                status = await self._run(self._leases.wait_status, waiter_id, known)
                if isinstance(status, Granted):
                    delivered = True
                    yield status
                    return
                call.position = status.position
                if stream and (status.position, status.blocked) != last:
                    last = (status.position, status.blocked)
                    yield status
        except (asyncio.CancelledError, GeneratorExit):
            if not delivered and len(calls) == 1:
                # The caller is gone: no await may be cancelled here, so the
                # request leaves the queue in the background.
                self._leave(_depart(self._run, self._leases, waiter_id))
            raise
        finally:
            calls.remove(call)
            if not calls:
                del self._calls[waiter_id]
                self._results.pop(waiter_id, None)

    async def _woken(self, call: _Call, deadline: float) -> int:
        """Why the call is woken: at once if something came while it was
        busy, else when something concerns it, at the latest at `deadline`."""
        if call.pending:
            why, call.pending = call.pending, 0
            return why
        waker: asyncio.Future[int] = self._loop.create_future()
        call.waker = waker
        timer = self._loop.call_later(max(0.0, deadline - time.time()), _settle, waker)
        try:
            return await waker
        finally:
            timer.cancel()
            call.waker = None

    # ------------------------------------------------- places in the queue

    def _changed(self, full: bool) -> None:
        """Something moved in the queue (`full`: the safety poll is due): the
        places are read once the last read is done and `REFRESH_SECONDS`
        after it began."""
        self._changed_since = True
        self._full = self._full or full
        if not full:
            for listener in list(self._listeners):
                listener()
        if self._refreshing is not None or self._refresh_timer is not None:
            return
        delay = self._last_refresh + REFRESH_SECONDS - self._loop.time()
        self._refresh_timer = self._loop.call_later(max(0.0, delay), self._refresh)

    def _refresh(self) -> None:
        self._refresh_timer = None
        full, self._full, self._changed_since = self._full, False, False
        if not self._calls:
            return
        self._last_refresh = self._loop.time()
        self._refreshing = asyncio.ensure_future(self._read_places(full))
        self._refreshing.add_done_callback(self._refreshed)

    async def _read_places(self, full: bool) -> None:
        """Reads the places of every request followed here at once; wakes the
        calls of those no longer waiting, and the streams whose place moved
        (every stream if `full`, to read anew what blocks it)."""
        waiter_ids = list(self._calls)
        places = await self._run(self._leases.wait_positions, waiter_ids)
        for waiter_id in waiter_ids:
            position = places.get(waiter_id)
            for call in self._calls.get(waiter_id, ()):
                if position is None:
                    call.wake(_READ)
                elif call.stream and (full or position != call.position):
                    call.position = position
                    call.wake(_MOVED)

    def _refreshed(self, future: asyncio.Future) -> None:
        self._refreshing = None
        if not future.cancelled() and future.exception() is not None:
            log.warning(
                "the places of the waiting requests could not be read: %s", future.exception()
            )
        if self._changed_since:
            self._changed(False)

    def _arm_safety_poll(self) -> None:
        if self._safety is None:
            self._safety = self._loop.call_later(SAFETY_POLL_SECONDS, self._safety_poll)

    def _safety_poll(self) -> None:
        self._safety = None
        if self._calls:
            self._changed(True)
            self._arm_safety_poll()

    # ------------------------------------------------------------ departures

    async def drain(self, timeout: float) -> None:
        """Once the calls ended: stops the board's own reads and waits, up
        to `timeout` seconds, for them and the departures under way."""
        for timer in (self._refresh_timer, self._safety):
            if timer is not None:
                timer.cancel()
        self._refresh_timer = self._safety = None
        under_way = set(self._leaving)
        if self._refreshing is not None:
            under_way.add(self._refreshing)
        if under_way:
            await asyncio.wait(under_way, timeout=timeout)

    def _leave(self, leaving) -> None:
        """Runs a departure in the background, keeping it until done."""
        future = asyncio.ensure_future(leaving)
        self._leaving.add(future)
        future.add_done_callback(self._left)

    def _left(self, future: asyncio.Future) -> None:
        self._leaving.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning(
                "a waiting call left, but its request could not leave the queue: %s",
                future.exception(),
            )


async def _depart(run: Runner, leases: Leases, waiter_id: int) -> None:
    """Takes a request whose caller left out of the queue, trying again
    after a transient database failure (a lock timeout behind a crowd of
    other departures, a dropped connection): else it would wait in the
    queue, reserving resources, until its deadline."""
    for attempt in range(1, DEPARTURE_ATTEMPTS + 1):
        try:
            await run(leases.abandon, waiter_id, False)
            return
        except (peewee.OperationalError, peewee.InterfaceError, UnavailableError) as error:
            if attempt == DEPARTURE_ATTEMPTS:
                raise
            log.info("request %s could not leave the queue yet (%s); retrying", waiter_id, error)
            await asyncio.sleep(DEPARTURE_BACKOFF * 2 ** (attempt - 1))


def _settle(waker: asyncio.Future[int]) -> None:
    """A waiting call's deadline came."""
    if not waker.done():
        waker.set_result(_DEADLINE)
