"""The audit trail: recording changes as events, in the transaction that
makes them, and reading them back (listings, the reads behind watches,
retention)."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from typing import Any

from broker.domain import paging
from broker.domain.errors import InvalidArgumentError, OutOfRangeError
from broker.domain.values import EventFilter, EventType, EventView, Page
from broker.models import event as event_model
from broker.models.transactions import write_transaction

MAX_FILTER_TEXT = 128
MAX_TYPES = 16
# Events deleted by one retention transaction: the write lock is held briefly.
PRUNE_BATCH = 500


def event(
    type: EventType,
    time: float,
    *,
    resource: str = "",
    kind: str = "",
    lease_id: str = "",
    fencing_token: int = 0,
    actor: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One event row, ready for `record`."""
    return {
        "type": type.value,
        "time": time,
        "resource": resource,
        "kind": kind,
        "lease_id": lease_id,
        "fencing_token": fencing_token,
        "actor": actor,
        "reason": reason,
        "detail": json.dumps(detail, separators=(",", ":")) if detail else "",
    }


def record(*rows: dict[str, Any]) -> None:
    """Stores events; call inside the transaction of the change."""
    event_model.record(rows)


def check_filter(given: EventFilter, path: str = "filter") -> EventFilter:
    """The filter if every part of it is well formed; else INVALID_ARGUMENT
    naming the part (under `path`, if any)."""
    path = f"{path}." if path else ""
    for name in ("resource", "kind", "lease_id", "actor"):
        if len(getattr(given, name)) > MAX_FILTER_TEXT:
            raise InvalidArgumentError.of(
                f"{path}{name}", f"is longer than {MAX_FILTER_TEXT} characters"
            )
    if len(given.types) > MAX_TYPES:
        raise InvalidArgumentError.of(f"{path}types", f"holds more than {MAX_TYPES} types")
    if (
        given.start_time is not None
        and given.end_time is not None
        and given.end_time <= given.start_time
    ):
        raise InvalidArgumentError.of(f"{path}end_time", "must be after start_time")
    return given


class EventLog:
    """Reads of the audit trail, and its retention."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock

    def list(
        self, given: EventFilter, page_size: int, page_token: str, after_sequence: int = 0
    ) -> Page[EventView]:
        """One page of the events after `after_sequence` that pass `given`,
        oldest first."""
        size = paging.page_size(page_size)
        check_filter(given)
        position = paging.decode_token(page_token, ("after",))
        after = after_sequence
        if position is not None:
            if not isinstance(position["after"], int) or position["after"] < 0:
                raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
            after = max(after, position["after"])
        views = self.read(given, after, size + 1)
        more = len(views) > size
        views = views[:size]
        token = paging.encode_token({"after": views[-1].sequence}) if more else ""
        return Page(tuple(views), token)

    def read(
        self, given: EventFilter, after: int, limit: int, upto: int | None = None
    ) -> builtins.list[EventView]:
        """Up to `limit` events after sequence `after` (and at most `upto`)
        that pass `given`, oldest first."""
        rows = event_model.list_events(
            after,
            limit,
            upto=upto,
            resource=given.resource,
            kind=given.kind,
            lease_id=given.lease_id,
            actor=given.actor,
            types=[t.value for t in given.types],
            start_time=given.start_time,
            end_time=given.end_time,
        )
        return [view_of(row) for row in rows]

    def start(self, after: int) -> int:
        """Where a watch after sequence `after` may start: OUT_OF_RANGE if
        events after it were deleted by retention."""
        pruned = event_model.pruned_through()
        if after < pruned:
            oldest = event_model.oldest_sequence()
            raise OutOfRangeError(
                f"after_sequence {after} is older than the events kept: events up to "
                f"{pruned} were deleted by retention; the oldest kept is {oldest}, so "
                f"resume after {oldest - 1 if oldest else pruned} (or list from there)"
            )
        return after

    def latest(self) -> int:
        """The newest sequence stored, 0 if none."""
        return event_model.latest_sequence()

    def prune(self, max_age: float, batches: int) -> int:
        """Deletes events older than `max_age` seconds, at most `batches`
        transactions of `PRUNE_BATCH` each; returns how many."""
        deleted = 0
        for _ in range(batches):
            with write_transaction():
                count = event_model.delete_older(self.clock() - max_age, PRUNE_BATCH)
            deleted += count
            if count < PRUNE_BATCH:
                break
        return deleted


def view_of(row: event_model.Event) -> EventView:
    return EventView(
        sequence=row.id,
        time=row.time,
        type=EventType(row.type),
        actor=row.actor,
        reason=row.reason,
        resource=row.resource,
        kind=row.kind,
        lease_id=row.lease_id,
        fencing_token=row.fencing_token,
        detail=json.loads(row.detail) if row.detail else {},
    )
