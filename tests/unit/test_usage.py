"""Usage statistics from the audit trail, on a fake clock: grants, held
time (to the end, or now), waits in the queue, expiries and revokes, per
resource or per kind, over a time range."""

from __future__ import annotations

import pytest

from broker.domain.errors import InvalidArgumentError
from broker.domain.events import EventLog
from broker.domain.usage import Usage
from broker.domain.values import AcquireRequest, Waiting
from tests.unit.builders import need, phone


def acquire(leases, name: str, holder: str, ttl: float = 60.0, max_wait: float = 0.0):
    return leases.acquire(AcquireRequest((need("Phone", name=name),), ttl, holder, max_wait))


@pytest.fixture
def usage(database, clock) -> Usage:
    return Usage(EventLog(clock), clock)


@pytest.fixture
def history(inventory, leases, clock):
    """p1: alice holds it 15 s, bob waits 5 s for it, holds it 20 s and is
    revoked; p2: carol's lease expires after 40 s. Returns the start time."""
    start = clock.now
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    alice = acquire(leases, "p1", "alice")
    acquire(leases, "p2", "carol", ttl=30.0)
    clock.advance(10)
    waiting = acquire(leases, "p1", "bob", max_wait=600.0)
    assert isinstance(waiting, Waiting)
    clock.advance(5)
    leases.release(alice.lease.lease_id, alice.secret)
    clock.advance(20)
    [held] = [lease for lease in leases.list(None, "bob", "", 0, "").items]
    leases.revoke(held.lease_id, "bench rewired", actor="admin")
    clock.advance(5)
    leases.expire_due()
    return start


def test_per_resource(usage, history):
    p1, p2 = usage.stats("", "", None, None, by_kind=False)
    assert (p1.resource, p1.kind, p1.grants, p1.total_held, p1.mean_held) == (
        "p1",
        "Phone",
        2,
        35.0,
        17.5,
    )
    assert (p1.wait_p50, p1.wait_p95, p1.expiries, p1.revokes) == (0.0, 5.0, 0, 1)
    assert (p2.resource, p2.grants, p2.total_held, p2.expiries, p2.revokes) == (
        "p2",
        1,
        40.0,
        1,
        0,
    )


def test_per_kind_and_filtered(usage, history):
    [phones] = usage.stats("", "", None, None, by_kind=True)
    assert (phones.resource, phones.kind, phones.grants, phones.total_held) == (
        "",
        "Phone",
        3,
        75.0,
    )
    assert (phones.mean_held, phones.wait_p50, phones.wait_p95) == (25.0, 0.0, 5.0)
    assert (phones.expiries, phones.revokes) == (1, 1)
    assert [v.resource for v in usage.stats("p2", "", None, None, by_kind=False)] == ["p2"]
    assert usage.stats("", "Licence", None, None, by_kind=False) == []


def test_a_time_range_counts_what_happened_in_it(usage, history):
    # From 10 s on: bob's grant (held 20 s, waited 5 s), the revoke and the expiry.
    p1, p2 = usage.stats("", "", history + 10, None, by_kind=False)
    assert (p1.grants, p1.total_held, p1.wait_p50, p1.revokes) == (1, 20.0, 5.0, 1)
    assert (p2.grants, p2.total_held, p2.mean_held, p2.expiries) == (0, 0.0, 0.0, 1)
    assert usage.stats("", "", history + 100, None, by_kind=False) == []


def test_a_grant_still_held_counts_until_now(usage, inventory, leases, clock):
    inventory.create(phone("p1"))
    acquire(leases, "p1", "dana")
    clock.advance(12)
    [p1] = usage.stats("", "", None, None, by_kind=False)
    assert (p1.grants, p1.total_held) == (1, 12.0)


def test_a_bad_range_names_its_field(usage):
    with pytest.raises(InvalidArgumentError) as error:
        usage.stats("", "", 20.0, 10.0, by_kind=False)
    assert [v.field for v in error.value.violations] == ["end_time"]
