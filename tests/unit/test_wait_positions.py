"""What the waiting calls' board reads and is told, through `Leases` on each
backend: the places of any number of waiting requests in one statement,
and `on_queue_changed` once per commit that added or ended waiting
requests, never for one that left the queue alone."""

from __future__ import annotations

import pytest

from broker.domain.leasing import Leases
from broker.domain.values import WaiterState
from broker.models import queue as queue_model
from tests.statement_counter import counting
from tests.unit.builders import calc, need
from tests.unit.test_queue import granted_to, hold, queued_ids, release, wait


@pytest.fixture
def changes() -> list[None]:
    """One entry per `on_queue_changed` call."""
    return []


@pytest.fixture
def leases(database, kinds, clock, changes) -> Leases:
    return Leases(
        kinds,
        default_ttl=30.0,
        max_ttl=600.0,
        clock=clock,
        on_queue_changed=lambda: changes.append(None),
    )


@pytest.mark.parametrize("waiters", [3, 60])
def test_the_places_of_any_number_of_waiters_are_read_in_one_statement(
    database, inventory, leases, waiters
):
    inventory.create(calc("calc-1"))
    held = hold(leases, need("Calculator"))
    waiting = [
        wait(leases, need("Calculator"), holder=f"w{n}", priority=n % 3) for n in range(waiters)
    ]
    order = queued_ids(leases)
    ids = [w.waiter_id for w in waiting]

    with counting(database) as counted:
        places = leases.wait_positions(ids)

    assert counted.count == 1, str(counted)
    assert places == {waiter_id: order.index(waiter_id) for waiter_id in ids}
    assert places == {
        waiter_id: queue_model.position(queue_model.get_waiter(waiter_id), WaiterState.WAITING)
        for waiter_id in ids
    }
    release(leases, held)
    # The first in line was granted: it has no place any more.
    places = leases.wait_positions(ids)
    assert order[0] not in places
    assert places == {waiter_id: order.index(waiter_id) - 1 for waiter_id in order[1:]}


def test_a_commit_reports_a_queue_change_only_when_waiting_requests_came_or_left(
    inventory, leases, changes
):
    inventory.create(calc("calc-1"))
    first = hold(leases, need("Calculator"))
    leases.renew(first.lease.lease_id, first.secret)
    assert changes == []

    waiting = wait(leases, need("Calculator"), holder="waiter")
    assert len(changes) == 1
    release(leases, first)  # grants the waiter
    assert len(changes) == 2
    second = granted_to(leases, waiting)
    release(leases, second)  # nobody waits: nothing changes in the queue
    assert len(changes) == 2

    third = hold(leases, need("Calculator"))
    leaving = wait(leases, need("Calculator"), holder="leaving")
    leases.abandon(leaving.waiter_id, False)
    assert len(changes) == 4
    release(leases, third)
    assert len(changes) == 4
