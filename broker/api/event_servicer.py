"""`broker.v1.EventService`: the audit trail, listed and watched. Listing is
one domain call through the runner; watching is the `EventFeed`'s."""

from __future__ import annotations

from collections import OrderedDict

from broker.api import convert
from broker.api.event_feed import EventFeed
from broker.api.runner import Runner
from broker.domain.events import EventLog
from broker.domain.usage import Usage
from broker.domain.values import EventView
from broker.v1 import event_service_pb2 as pb
from broker.v1 import event_service_pb2_grpc

# Responses kept for the newest events: every watch that follows the feed is
# handed the same event within about one buffer, so each is built once.
SHARED_RESPONSES = 2048


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, events: EventLog, feed: EventFeed, run: Runner):
        self.events = events
        self.usage = Usage(events)
        self.feed = feed
        self.run = run
        self._responses: OrderedDict[int, pb.WatchEventsResponse] = OrderedDict()
        # How many watch responses were built: one per event, whatever the
        # number of watches it went to.
        self.responses_built = 0

    async def ListEvents(self, request, context):
        page = await self.run(
            self.events.list,
            convert.event_filter(request.filter),
            request.page_size,
            request.page_token,
            request.after_sequence,
        )
        return pb.ListEventsResponse(
            events=[convert.event_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    async def WatchEvents(self, request, context):
        wanted = convert.event_filter(request.filter)
        async for view in self.feed.watch(wanted, request.after_sequence):
            yield self._response(view)

    def _response(self, view: EventView) -> pb.WatchEventsResponse:
        """The response for an event, built once and shared by the watches it
        goes to (on the event loop only, so without a lock; never mutated)."""
        response = self._responses.get(view.sequence)
        if response is None:
            response = pb.WatchEventsResponse(event=convert.event_to_proto(view))
            self.responses_built += 1
            self._responses[view.sequence] = response
            if len(self._responses) > SHARED_RESPONSES:
                self._responses.popitem(last=False)
        return response

    async def GetUsageStats(self, request, context):
        views = await self.run(
            self.usage.stats,
            request.resource,
            request.kind,
            convert.seconds_at(request.start_time) if request.HasField("start_time") else None,
            convert.seconds_at(request.end_time) if request.HasField("end_time") else None,
            request.group_by == pb.USAGE_GROUPING_KIND,
        )
        return pb.GetUsageStatsResponse(stats=[convert.usage_to_proto(view) for view in views])
