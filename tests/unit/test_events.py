"""The audit trail's domain: filters, listing pages, retention in bounded
batches, and cursors older than retention."""

from __future__ import annotations

import pytest

from broker.domain import events
from broker.domain.errors import InvalidArgumentError, OutOfRangeError
from broker.domain.events import PRUNE_BATCH, EventLog
from broker.domain.values import EventFilter, EventType
from broker.models import event as event_model
from broker.models.transactions import write_transaction
from tests.unit.builders import phone


def record(count: int, time: float, resource: str = "p1") -> None:
    with write_transaction():
        events.record(
            *(
                events.event(EventType.RESOURCE_UPDATED, time, resource=resource, kind="Phone")
                for _ in range(count)
            )
        )


@pytest.fixture
def log(database, clock) -> EventLog:
    return EventLog(clock)


def test_pages_follow_the_sequence_and_filters_apply(log, inventory, leases, clock):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    clock.advance(10)
    record(3, clock.now, "p2")
    first = log.list(EventFilter(), 2, "")
    assert [e.resource for e in first.items] == ["p1", "p2"]
    second = log.list(EventFilter(), 2, first.next_page_token)
    assert [e.sequence for e in second.items] == [
        first.items[-1].sequence + 1,
        first.items[-1].sequence + 2,
    ]
    assert len(log.list(EventFilter(), 0, "").items) == 5
    only_p2 = log.list(EventFilter(resource="p2", types=(EventType.RESOURCE_UPDATED,)), 0, "")
    assert [e.type for e in only_p2.items] == [EventType.RESOURCE_UPDATED] * 3
    later = log.list(EventFilter(start_time=clock.now), 0, "")
    assert len(later.items) == 3
    assert log.list(EventFilter(end_time=clock.now), 0, "").items[-1].resource == "p2"


@pytest.mark.parametrize(
    "given, field",
    [
        (EventFilter(actor="a" * 129), "filter.actor"),
        (EventFilter(types=tuple(EventType) * 2), "filter.types"),
        (EventFilter(start_time=10.0, end_time=10.0), "filter.end_time"),
    ],
)
def test_a_bad_filter_names_its_field(log, given, field):
    with pytest.raises(InvalidArgumentError) as error:
        log.list(given, 0, "")
    assert [v.field for v in error.value.violations] == [field]


def test_a_forged_page_token_is_invalid(log):
    token = events.paging.encode_token({"after": "x"})
    with pytest.raises(InvalidArgumentError) as error:
        log.list(EventFilter(), 0, token)
    assert error.value.violations[0].field == "page_token"


def test_retention_deletes_old_events_in_bounded_batches_and_keeps_the_newest(log, clock):
    record(2 * PRUNE_BATCH + 10, clock.now - 100)
    record(5, clock.now)
    newest = log.latest()
    # One batch per sweep allowed: one batch deleted.
    assert log.prune(50, batches=1) == PRUNE_BATCH
    assert event_model.pruned_through() == PRUNE_BATCH
    assert log.prune(50, batches=5) == PRUNE_BATCH + 10
    assert log.prune(50, batches=5) == 0
    assert event_model.Event.select().count() == 5
    # Everything is old now: all go but the newest, whose id stays the largest.
    clock.advance(1000)
    assert log.prune(50, batches=5) == 4
    assert [row.id for row in event_model.Event.select()] == [newest]
    record(1, clock.now)
    assert log.latest() == newest + 1


def test_a_cursor_older_than_retention_is_out_of_range(log, clock):
    record(10, clock.now - 100)
    record(1, clock.now)
    assert log.start(0) == 0  # nothing deleted yet
    log.prune(50, batches=1)
    oldest = event_model.oldest_sequence()
    assert log.start(oldest - 1) == oldest - 1
    with pytest.raises(OutOfRangeError) as error:
        log.start(oldest - 2)
    assert f"the oldest kept is {oldest}" in error.value.message
