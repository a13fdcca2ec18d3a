"""What the console's live pages follow, read from this broker's own parts:
its event feed (one more watcher of it), and, per batch of events, the
resources and leases they name, read in one domain call whatever the
number of open pages. The queue, which records no events, is followed
through the wait board's changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection

from broker.api import convert
from broker.api.event_feed import EVERY_EVENT, EventFeed
from broker.api.runner import Runner
from broker.api.waits import WaitBoard
from broker.domain.errors import NotFoundError
from broker.domain.events import EventLog
from broker.domain.inventory import Inventory
from broker.domain.leasing import Leases
from broker.domain.values import ResourceView
from broker.v1 import event_pb2, lease_pb2, resource_pb2

# The most waiters a live queue page shows.
QUEUE_SHOWN = 200


class LiveSource:
    def __init__(
        self,
        feed: EventFeed,
        events: EventLog,
        inventory: Inventory,
        leases: Leases,
        board: WaitBoard,
        run: Runner,
    ):
        self._feed = feed
        self._events = events
        self._inventory = inventory
        self._leases = leases
        self._board = board
        self._run = run

    async def newest(self) -> int:
        return await self._run(self._events.latest)

    async def follow(self, after: int) -> AsyncIterator[event_pb2.Event]:
        async for view in self._feed.watch(EVERY_EVENT, after):
            yield convert.event_to_proto(view)

    async def read(
        self, names: Collection[str], lease_ids: Collection[str]
    ) -> tuple[dict[str, resource_pb2.Resource | None], list[lease_pb2.Lease]]:
        """The resources named (None for one gone) and the leases, in one
        domain call."""
        views = await self._run(self._read, sorted(names), sorted(lease_ids))
        resources, leases = views
        return (
            {
                name: None if view is None else convert.resource_to_proto(view)
                for name, view in resources.items()
            },
            [convert.lease_to_proto(view) for view in leases],
        )

    def _read(self, names: list[str], lease_ids: list[str]):
        resources: dict[str, ResourceView | None] = {}
        for name in names:
            try:
                resources[name] = self._inventory.get(name)
            except NotFoundError:
                resources[name] = None
        leases = []
        for lease_id in lease_ids:
            try:
                leases.append(self._leases.get(lease_id))
            except NotFoundError:
                continue
        return resources, leases

    async def waiters(self) -> list[lease_pb2.Waiter]:
        page = await self._run(self._leases.list_waiters, QUEUE_SHOWN, "")
        return [convert.waiter_to_proto(view) for view in page.items]

    def listen_queue(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self._board.listen(listener)
