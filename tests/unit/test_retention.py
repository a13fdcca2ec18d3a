"""Retention: what ended long ago goes, in bounded batches; what is live,
or ended recently, stays; fencing numbers keep growing without the grants
that went."""

from __future__ import annotations

import pytest

from broker.domain import retention as retention_module
from broker.domain.errors import NotFoundError
from broker.domain.events import EventLog
from broker.domain.retention import Ages, Retention
from broker.domain.sessions import SessionEnding, Sessions
from broker.domain.values import AcquireRequest, LeaseState, Waiting
from broker.models.lease import LeaseGrant
from broker.models.queue import Waiter
from broker.models.session import Session
from tests.unit.builders import need, phone

DAY = 86400.0


@pytest.fixture
def retention(database, clock) -> Retention:
    return Retention(EventLog(clock), Ages(30 * DAY, 10 * DAY, 5 * DAY, 5 * DAY), clock)


def acquire(leases, name: str, holder: str = "alice", max_wait: float = 0.0):
    return leases.acquire(AcquireRequest((need("Phone", name=name),), 60.0, holder, max_wait))


def test_ended_leases_waits_and_sessions_go_after_their_age(inventory, leases, clock, retention):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    old = acquire(leases, "p1")
    waiting = acquire(leases, "p1", holder="bob", max_wait=600.0)
    assert isinstance(waiting, Waiting)
    leases.abandon(waiting.waiter_id, timed_out=False)
    leases.release(old.lease.lease_id, old.secret)
    sessions = Sessions(leases, keepalive_timeout=10.0, max_keepalive_timeout=60.0)
    ended = sessions.open("alice", None)
    sessions.close(ended.session_id, SessionEnding.CLOSED)
    lapsing = acquire(leases, "p2")  # its TTL runs out at the next acquire
    opened = sessions.open("carol", None)
    clock.advance(6 * DAY)
    recent = acquire(leases, "p1")
    leases.release(recent.lease.lease_id, recent.secret)

    assert retention.sweep(batches=5) == {"events": 0, "leases": 0, "waiters": 1, "sessions": 1}
    assert [row.id for row in Session.select()] == [opened.session_id]
    assert Waiter.select().count() == 0
    clock.advance(5 * DAY)
    assert retention.sweep(batches=5)["leases"] == 1
    with pytest.raises(NotFoundError):
        leases.get(old.lease.lease_id)
    assert leases.get(recent.lease.lease_id).state == LeaseState.RELEASED
    assert leases.get(lapsing.lease.lease_id).state == LeaseState.EXPIRED  # ended on day 6
    assert LeaseGrant.select().where(LeaseGrant.lease == old.lease.lease_id).count() == 0


def test_each_sweep_deletes_at_most_its_batches(inventory, leases, clock, retention, monkeypatch):
    monkeypatch.setattr(retention_module, "PRUNE_BATCH", 2)
    inventory.create(phone("p1"))
    for _ in range(7):
        granted = acquire(leases, "p1")
        leases.release(granted.lease.lease_id, granted.secret)
    clock.advance(11 * DAY)
    assert retention.sweep(batches=2)["leases"] == 4
    assert retention.sweep(batches=2)["leases"] == 3
    assert retention.sweep(batches=2)["leases"] == 0


def test_fencing_numbers_keep_growing_after_their_grants_went(inventory, leases, clock, retention):
    inventory.create(phone("p1"))
    for _ in range(3):
        granted = acquire(leases, "p1")
        leases.release(granted.lease.lease_id, granted.secret)
    highest = granted.lease.grants[0].fencing_token
    inventory.delete("p1", "")
    clock.advance(11 * DAY)
    assert retention.sweep(batches=5)["leases"] == 3
    assert LeaseGrant.select().count() == 0
    inventory.create(phone("p1"))
    assert acquire(leases, "p1").lease.grants[0].fencing_token > highest
