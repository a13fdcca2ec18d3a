"""What an acquire that waits in the broker's queue reports: `Waiting` while
it waits (its place and what blocks it), then one `Granted`.

`BrokerClient.watch_acquire` yields these; `wait_for_grant` consumes them,
handing each `Waiting` to a callback, and returns the `Granted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import Callable, Generator

from broker.v1 import lease_pb2
from sdk.text import queue_status_text


@dataclasses.dataclass(frozen=True)
class Waiting:
    """The request waits in the queue; `status` is the broker's `QueueStatus`."""

    status: lease_pb2.QueueStatus

    @property
    def position(self) -> int:
        """How many waiting requests are served before this one (0: next)."""
        return self.status.position

    @property
    def blocked(self) -> lease_pb2.AcquireBlocked | None:
        """The first requirement it cannot get now, and who holds what it could use."""
        return self.status.blocked if self.status.HasField("blocked") else None

    @property
    def quota(self) -> str:
        """Set while it waits for its principal's quota rather than for
        resources: how many the principal holds, its limit, what it needs."""
        return self.status.quota

    @property
    def holders(self) -> list[str]:
        """The holders of the resources it waits for."""
        return [holder.holder for holder in self.blocked.holders] if self.blocked else []

    @property
    def deadline(self) -> datetime.datetime:
        """When the wait ends unless the request is granted first."""
        return self.status.deadline.ToDatetime(tzinfo=datetime.UTC)

    def __str__(self) -> str:
        return queue_status_text(self.status)


@dataclasses.dataclass(frozen=True)
class Granted:
    """The request was granted: the lease and its secret."""

    lease: lease_pb2.Lease
    secret: str


AcquireEvent = Waiting | Granted
AcquireEvents = Generator[AcquireEvent, None, None]


def wait_for_grant(events: AcquireEvents, on_wait: Callable[[Waiting], None]) -> Granted:
    """Calls `on_wait` with each `Waiting` of `events` and returns their
    `Granted`. However it ends (the grant, an error, Ctrl-C in `on_wait` or
    while blocked), the events are closed, which cancels the call: a request
    whose caller left does not stay in the queue."""
    with contextlib.closing(events):
        for event in events:
            if isinstance(event, Granted):
                return event
            on_wait(event)
    raise RuntimeError("the acquire's events ended without a grant")
