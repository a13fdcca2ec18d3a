"""The hand-over of a watch from its replay to the shared feed, in the
interleaving that once delivered an event twice: a filtered watch joins the
feed and wakes it while another watch is still replaying, and the feed's
read comes back only after the second watch has joined. Closing the feed
right after must not hang either."""

from __future__ import annotations

import asyncio

from broker.api.event_feed import EVERY_EVENT, EventFeed
from broker.domain import events
from broker.domain.events import EventLog
from broker.domain.values import EventFilter, EventType
from broker.models.transactions import write_transaction


def record(resource: str, time: float) -> None:
    with write_transaction():
        events.record(events.event(EventType.RESOURCE_CREATED, time, resource=resource))


class GatedRunner:
    """Runs domain calls on the loop; the feed's own reads (of every event,
    with no upper bound) wait for `gate` while it is closed."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()

    async def __call__(self, function, *args):
        if args and args[0] is EVERY_EVENT and len(args) == 3 and not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
        return function(*args)

    def close(self) -> None:
        pass


async def follow(database, clock) -> list[int]:
    for name in ("calc-1", "calc-2", "calc-3"):
        record(name, clock.now)
    run = GatedRunner()
    feed = EventFeed(asyncio.get_running_loop(), EventLog(), run, buffer=100, poll=3600.0)
    feed.start()
    try:
        resumed = feed.watch(EVERY_EVENT, 1)
        filtered = feed.watch(EventFilter(resource="calc-2"), 0)
        seen = [(await anext(resumed)).sequence, (await anext(resumed)).sequence]
        assert (await anext(filtered)).sequence == 2
        run.gate.clear()
        # The filtered watch has replayed everything: it joins and wakes the
        # feed, whose read is held.
        waiting_filtered = asyncio.ensure_future(anext(filtered))
        await run.held.wait()
        # The first watch finishes its replay and joins while that read is out.
        waiting_resumed = asyncio.ensure_future(anext(resumed))
        while feed.watching() < 2:
            await asyncio.sleep(0)
        run.gate.set()
        record("calc-4", clock.now)
        feed.wake(4)
        seen.append((await asyncio.wait_for(waiting_resumed, 5.0)).sequence)
        waiting_filtered.cancel()
        await resumed.aclose()
        return seen
    finally:
        await feed.close()


def test_a_watch_joining_during_the_feeds_read_gets_each_event_once(database, clock):
    assert asyncio.run(follow(database, clock)) == [2, 3, 4]
