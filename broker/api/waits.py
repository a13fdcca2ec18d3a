"""Waking the calls that wait for a grant.

Grants to waiting requests are made by whichever call frees the resources;
that call's domain transaction names the requests it granted, and the board
wakes their waiting calls on this broker. A waiting call also looks at its
request on its own every `POLL_SECONDS`, so a grant made elsewhere (another
broker, the sweep) is never missed for long.

A waiting call holds little: one future to be woken by and a timer for
its next look; no task of its own. A call that goes away leaves the queue through a background
domain call, so the event loop never waits on the database for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import peewee

from broker.api.runner import Runner
from broker.domain.errors import UnavailableError
from broker.domain.leasing import Leases
from broker.domain.values import Granted, Waiting

POLL_SECONDS = 1.0
# Tries of a departure whose transaction met a transient database failure,
# the first retry this many seconds later, each next one twice as late.
DEPARTURE_ATTEMPTS = 6
DEPARTURE_BACKOFF = 0.25

log = logging.getLogger(__name__)


# Grants made here for calls not (yet) waiting here, kept for a call that
# registers just after its request was granted; the oldest go first.
UNCLAIMED_LIMIT = 4096


class WaitBoard:
    """The wake-up futures of the calls waiting on this broker, by waiter id
    (a retried call follows the same request as the call it replaces),
    owned by the server's event loop; `notify` and `announce` may be called from any
    thread. A grant made on this broker is handed to the waiting call as is;
    one announced by another broker names only the waiter, whose call then
    reads its grant."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wakers: dict[int, list[asyncio.Future[None]]] = {}
        self._followers: dict[int, int] = {}
        self._results: dict[int, Granted] = {}
        self._unclaimed: OrderedDict[int, Granted] = OrderedDict()
        self._leaving: set[asyncio.Future] = set()

    def waiting_calls(self) -> int:
        """How many waiting requests have a call waiting on this broker."""
        return len(self._followers)

    def notify(self, granted: dict[int, Granted]) -> None:
        """Grants made by this broker's transactions."""
        self._call(self._wake, dict(granted))

    def announce(self, waiter_ids: list[int]) -> None:
        """Grants announced by any broker (by id only)."""
        self._call(self._wake, dict.fromkeys(waiter_ids))

    def _call(self, function, argument) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            function(argument)
        else:
            self._loop.call_soon_threadsafe(function, argument)

    def _wake(self, granted: dict[int, Granted | None]) -> None:
        for waiter_id, grant in granted.items():
            wakers = self._wakers.get(waiter_id)
            if wakers is not None:
                if grant is not None:
                    self._results[waiter_id] = grant
                for waker in wakers:
                    _settle(waker)
            elif grant is not None:
                self._unclaimed[waiter_id] = grant
                while len(self._unclaimed) > UNCLAIMED_LIMIT:
                    self._unclaimed.popitem(last=False)

    async def follow(
        self, leases: Leases, waiting: Waiting, run: Runner
    ) -> AsyncIterator[Granted | Waiting]:
        """Yields the request's status when it changes, and the grant last.
        Its wait ends at its deadline (DEADLINE_EXCEEDED, holding nothing);
        if the caller goes away before the grant is delivered, the request
        leaves the queue (or its fresh lease is released)."""
        waiter_id = waiting.waiter_id
        # A retry (same request id) follows the same waiter as the call it
        # replaces: the request leaves the queue only when its last caller does.
        self._followers[waiter_id] = self._followers.get(waiter_id, 0) + 1
        self._wakers.setdefault(waiter_id, [])
        last = waiting
        delivered = False
        try:
            early = self._unclaimed.pop(waiter_id, None)
            if early is not None:
                delivered = True
                yield early
                return
            while True:
                timeout = min(POLL_SECONDS, max(0.0, waiting.deadline - time.time()))
                await self._woken(waiter_id, timeout)
                handed = self._results.get(waiter_id)
                if handed is not None:
                    delivered = True
                    yield handed
                    return
                if time.time() >= waiting.deadline:
                    granted = await run(leases.abandon, waiting.waiter_id, True)
                    if granted is not None:
                        delivered = True
                        yield granted
                        return
                status = await run(leases.wait_status, waiting.waiter_id)
                if isinstance(status, Granted):
                    delivered = True
                    yield status
                    return
                if (status.position, status.blocked) != (last.position, last.blocked):
                    last = status
                    yield status
        except (asyncio.CancelledError, GeneratorExit):
            if not delivered and self._followers[waiter_id] == 1:
                # The caller is gone: no await may be cancelled here, so the
                # request leaves the queue in the background.
                self._leave(_depart(run, leases, waiting.waiter_id))
            raise
        finally:
            self._followers[waiter_id] -= 1
            if not self._followers[waiter_id]:
                del self._followers[waiter_id]
                self._wakers.pop(waiter_id, None)
                self._results.pop(waiter_id, None)

    async def _woken(self, waiter_id: int, timeout: float) -> None:
        """Until the request is woken (a grant) or `timeout` passes."""
        waker = self._loop.create_future()
        wakers = self._wakers[waiter_id]
        wakers.append(waker)
        timer = self._loop.call_later(timeout, _settle, waker)
        try:
            await waker
        finally:
            timer.cancel()
            wakers.remove(waker)

    async def drain(self, timeout: float) -> None:
        """Waits, up to `timeout` seconds, for departures under way."""
        if self._leaving:
            await asyncio.wait(set(self._leaving), timeout=timeout)

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


def _settle(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)
