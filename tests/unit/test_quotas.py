"""Per-principal quotas through `Leases` on a fake clock, on both backends:
a request that would pass its principal's quota is refused at once or waits
(reserving nothing, holding up no other principal) until its principal's
releases make room; one bigger than the quota fails fast; every resource
granted counts, shared ones too; counting is one indexed read."""

from __future__ import annotations

import peewee
import pytest

from broker.domain.errors import FailedPreconditionError, QuotaExceededError, ResourceBusyError
from broker.domain.leasing import Leases
from broker.domain.quotas import Quotas
from broker.domain.values import AcquireRequest, Granted, LeaseState, Requirement, Waiting
from broker.models import queue as queue_model
from tests.unit.builders import licence, need, phone
from tests.unit.test_schema import sent_statements

LIMIT = 2


@pytest.fixture
def announced() -> list[list[int]]:
    return []


@pytest.fixture
def leases(database, kinds, clock, announced) -> Leases:
    return Leases(
        kinds,
        default_ttl=30.0,
        max_ttl=600.0,
        quotas=Quotas(LIMIT, {"bob": 5, "root": 0}),
        clock=clock,
        on_granted=lambda granted: announced.append(list(granted)),
    )


@pytest.fixture
def phones(inventory) -> None:
    for index in range(6):
        inventory.create(phone(f"p{index}"))


def ask(leases: Leases, *requirements: Requirement, who: str, max_wait: float = 0.0):
    return leases.acquire(
        AcquireRequest(tuple(requirements), holder=f"{who}@bench", principal=who, max_wait=max_wait)
    )


def test_a_request_over_the_quota_that_does_not_wait_is_refused(leases, phones):
    held = ask(leases, need("Phone"), who="alice")
    assert isinstance(held, Granted)

    with pytest.raises(QuotaExceededError) as raised:
        ask(leases, need("Phone", count=2), who="alice")

    error = raised.value
    assert (error.principal, error.limit, error.held, error.needed) == ("alice", 2, 1, 2)
    assert "quotas.max_resources" in error.message
    assert [lease.lease_id for lease in leases.list(LeaseState.ACTIVE, "", "", 0, "").items] == [
        held.lease.lease_id
    ]
    assert isinstance(ask(leases, need("Phone"), who="alice"), Granted)  # up to the limit


def test_overrides_and_unlimited_principals(leases, phones):
    assert isinstance(ask(leases, need("Phone", count=3), who="bob"), Granted)
    assert isinstance(ask(leases, need("Phone", count=3), who="root"), Granted)


def test_a_request_bigger_than_the_quota_fails_fast(leases, phones):
    with pytest.raises(FailedPreconditionError) as raised:
        ask(leases, need("Phone", count=3), who="alice", max_wait=60)

    violation = raised.value.violations[0]
    assert (violation.type, violation.subject) == ("OVER_QUOTA", "principals/alice")
    assert "could never be granted" in violation.description
    assert queue_model.waiting(1) == []


def test_shared_resources_count_too(leases, inventory):
    inventory.create(licence("l1"))
    inventory.create(phone("p1"))
    assert isinstance(ask(leases, need("Licence"), need("Phone"), who="alice"), Granted)
    with pytest.raises(QuotaExceededError):
        ask(leases, need("Licence"), who="alice")


def test_a_waiting_request_is_granted_when_its_principal_releases(leases, phones, announced):
    held = ask(leases, need("Phone", count=2), who="alice")
    waiting = ask(leases, need("Phone"), who="alice", max_wait=60)
    assert isinstance(waiting, Waiting)
    status = leases.wait_status(waiting.waiter_id)
    assert status.blocked is None
    assert "waiting for its quota" in status.quota
    assert "holds 2 of the 2 resources" in status.quota
    # Others' releases do not make room for alice.
    other = ask(leases, need("Phone"), who="carol")
    leases.release(other.lease.lease_id, other.secret)
    assert announced == []

    leases.release(held.lease.lease_id, held.secret)

    assert announced == [[waiting.waiter_id]]
    granted = leases.wait_status(waiting.waiter_id)
    assert isinstance(granted, Granted)
    assert granted.lease.principal == "alice"


def test_a_waiter_over_its_quota_holds_up_no_other_principal(leases, inventory, announced):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    inventory.create(phone("p3"))
    alice = ask(leases, need("Phone", count=2), who="alice")
    blocker = ask(leases, need("Phone"), who="dave")  # the last free phone
    # Alice waits ahead of carol for a phone; alice is over her quota.
    ahead = ask(leases, need("Phone"), who="alice", max_wait=60)
    behind = ask(leases, need("Phone"), who="carol", max_wait=60)
    assert isinstance(ahead, Waiting) and isinstance(behind, Waiting)
    assert leases.wait_status(behind.waiter_id).position == 1

    leases.release(blocker.lease.lease_id, blocker.secret)

    # Carol gets the freed phone; alice's waiter reserved nothing.
    assert announced == [[behind.waiter_id]]
    assert isinstance(leases.wait_status(ahead.waiter_id), Waiting)
    leases.release(alice.lease.lease_id, alice.secret)
    assert announced[-1] == [ahead.waiter_id]


def test_a_newcomer_takes_what_an_over_quota_waiter_would_want(leases, inventory):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    held = ask(leases, need("Phone", count=2), who="alice")
    waiting = ask(leases, need("Phone"), who="alice", max_wait=60)
    inventory.create(phone("p3"))  # free now; alice may not have it

    assert isinstance(ask(leases, need("Phone"), who="carol"), Granted)
    assert isinstance(leases.wait_status(waiting.waiter_id), Waiting)
    leases.release(held.lease.lease_id, held.secret)
    assert isinstance(leases.wait_status(waiting.waiter_id), Granted)


def test_busy_and_over_quota_without_waiting_names_the_quota(leases, inventory):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    ask(leases, need("Phone", count=2), who="alice")
    with pytest.raises(QuotaExceededError):
        ask(leases, need("Phone"), who="alice")
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Phone"), who="carol")


def test_counting_is_one_read_per_principal_in_a_queue_pass(leases, phones, database):
    ask(leases, need("Phone", count=2), who="alice")
    waiters = [ask(leases, need("Phone"), who="alice", max_wait=60) for _ in range(5)]
    assert all(isinstance(w, Waiting) for w in waiters)
    keeper = ask(leases, need("Phone"), who="carol")

    with sent_statements() as sent:
        leases.release(keeper.lease.lease_id, keeper.secret)

    counts = [s for s in sent if "COUNT(*)" in s and "lease_grant" in s]
    assert len(counts) == 1


def test_leases_are_counted_through_the_principal_index(leases, database):
    schema = getattr(database, "schema", None)
    indexed = {tuple(index.columns) for index in database.get_indexes("lease", schema)}
    assert ("principal", "state") in indexed
    if not isinstance(database, peewee.SqliteDatabase):
        return  # PostgreSQL plans a table this small with a scan whatever its indexes
    plan = database.execute_sql(
        'EXPLAIN QUERY PLAN SELECT COUNT(*) FROM "lease_grant" JOIN "lease"'
        ' ON "lease_grant"."lease_id" = "lease"."id"'
        ' WHERE "lease"."principal" = ? AND "lease"."state" = ?',
        ["alice", 1],
    ).fetchall()
    details = " ".join(str(row[-1]) for row in plan)
    assert "lease_principal_state" in details
    assert "SCAN" not in details.replace("SCAN CONSTANT", "")


def test_a_waiter_bigger_than_a_lowered_quota_leaves_the_queue(leases, phones, kinds, clock):
    held = ask(leases, need("Phone", count=3), who="bob")
    waiting = ask(leases, need("Phone", count=4), who="bob", max_wait=60)
    assert isinstance(waiting, Waiting)
    # The broker restarts with bob's quota lowered below what he waits for.
    lowered = Leases(
        kinds, default_ttl=30.0, max_ttl=600.0, quotas=Quotas(LIMIT, {"bob": 3}), clock=clock
    )

    lowered.release(held.lease.lease_id, held.secret)

    with pytest.raises(FailedPreconditionError) as raised:
        lowered.wait_status(waiting.waiter_id)
    assert raised.value.violations[0].type == "WAIT_CANCELLED"
    assert "quota" in raised.value.violations[0].description
