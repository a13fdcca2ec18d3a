"""Waking the calls that wait for a grant.

Grants to waiting requests are made by whichever call frees the resources;
that call's domain transaction names the requests it granted, and the board
wakes their waiting calls on this broker. A waiting call also looks at its
request on its own every `POLL_SECONDS`, so a grant made elsewhere (another
broker, the sweep) is never missed for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from broker.api.runner import Runner
from broker.domain.leasing import Leases
from broker.domain.values import Granted, Waiting

POLL_SECONDS = 1.0


class WaitBoard:
    """One event per waiting call on this broker, by waiter id, owned by the
    server's event loop; `notify` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[int, asyncio.Event] = {}

    def notify(self, waiter_ids: list[int]) -> None:
        self._loop.call_soon_threadsafe(self._wake, list(waiter_ids))

    def _wake(self, waiter_ids: list[int]) -> None:
        for waiter_id in waiter_ids:
            event = self._events.get(waiter_id)
            if event is not None:
                event.set()

    async def follow(
        self, leases: Leases, waiting: Waiting, run: Runner
    ) -> AsyncIterator[Granted | Waiting]:
        """Yields the request's status when it changes, and the grant last.
        Its wait ends at its deadline (DEADLINE_EXCEEDED, holding nothing);
        if the caller goes away before the grant is delivered, the request
        leaves the queue (or its fresh lease is released)."""
        event = self._events.setdefault(waiting.waiter_id, asyncio.Event())
        last = waiting
        delivered = False
        try:
            while True:
                timeout = min(POLL_SECONDS, max(0.0, waiting.deadline - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
                event.clear()
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
            if not delivered:
                # The caller is gone: no await may be cancelled here.
                leases.abandon(waiting.waiter_id, False)
            raise
        finally:
            self._events.pop(waiting.waiter_id, None)
