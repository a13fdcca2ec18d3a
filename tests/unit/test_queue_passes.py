"""The queue's passes look only at what a change could serve; these check
that they still leave the queue as a full pass would.

- A request robbed of a reservation by a higher priority plans again and
  reserves what is left, so a later request cannot overtake it.
- Whatever a request lets go of (it was granted with other resources, or it
  left) is offered to the requests behind it.
- Requests queued by a broker that kept no keys are indexed on upgrade.
- Randomised (acquires that wait or not, releases, departures, resources
  taken out of service and back): after every operation, each waiting request reserves all it
  could among what those ahead of it left, a full pass over the whole queue
  would grant nobody (no request is left waiting while it could be
  served), and the queue's keys are exactly the waiting requests'.
"""

from __future__ import annotations

import random

import pytest

from broker.domain import planning
from broker.domain.errors import BrokerError, ResourceBusyError
from broker.domain.inventory import Inventory
from broker.domain.requests import decode_requirements
from broker.domain.values import AcquireRequest, Check, Constraint, Granted, Requirement, Waiting
from broker.models import queue as queue_model
from broker.models.queue import WaiterNeed
from broker.models.resource import Resource
from broker.models.transactions import write_transaction
from tests.unit.builders import calc, need, phone

WAITING = 1


def ask(leases, *requirements, holder, max_wait=60.0, priority=0):
    return leases.acquire(
        AcquireRequest(tuple(requirements), holder=holder, max_wait=max_wait, priority=priority)
    )


def reserved(name: str) -> int | None:
    return Resource.get(Resource.name == name).reserved_by


def test_a_request_robbed_of_its_reservation_reserves_what_is_left(inventory, leases):
    names = ("p1", "p2", "p3", "p4")
    for name in names:
        inventory.create(phone(name))
    held = {
        name: ask(leases, need("Phone", name=name), holder="keeper", max_wait=0) for name in names
    }
    big = ask(leases, need("Phone", count=3), holder="big")
    assert isinstance(big, Waiting)
    for name in ("p1", "p2"):
        leases.release(held[name].lease.lease_id, held[name].secret)
    assert {reserved("p1"), reserved("p2")} == {big.waiter_id}

    urgent = ask(leases, need("Phone"), holder="urgent", priority=5, max_wait=0)
    assert isinstance(urgent, Granted)
    taken = urgent.lease.grants[0].resource.name
    left = ({"p1", "p2"} - {taken}).pop()
    assert reserved(left) == big.waiter_id
    # The robbed request keeps what it still reserves: a later one may not take it.
    with pytest.raises(ResourceBusyError):
        ask(leases, need("Phone"), holder="later", max_wait=0)
    for name in ("p3", "p4"):
        leases.release(held[name].lease.lease_id, held[name].secret)
    status = leases.wait_status(big.waiter_id)
    assert isinstance(status, Granted)
    assert sorted(g.resource.name for g in status.lease.grants) == sorted([left, "p3", "p4"])


def test_what_a_granted_request_no_longer_reserves_goes_to_the_next(inventory, leases):
    inventory.create(calc("c1"))
    inventory.create(phone("p1"))
    calc_lease = ask(leases, need("Calculator"), holder="keeper", max_wait=0)
    phone_lease = ask(leases, need("Phone"), holder="keeper", max_wait=0)
    # `both` reserves the phone when it comes free, and waits for the calculator.
    both = ask(leases, need("Calculator"), need("Phone"), holder="both")
    single = ask(leases, need("Phone"), holder="single")
    leases.release(phone_lease.lease.lease_id, phone_lease.secret)
    assert reserved("p1") == both.waiter_id
    assert isinstance(leases.wait_status(single.waiter_id), Waiting)
    # `both` leaves: the phone it reserved goes to `single` in the same commit.
    leases.abandon(both.waiter_id, False)
    assert isinstance(leases.wait_status(single.waiter_id), Granted)
    leases.release(calc_lease.lease.lease_id, calc_lease.secret)


def test_a_reservation_follows_its_resource_out_of_service_and_back(kinds, leases, clock):
    inventory = Inventory(kinds, clock, on_change=leases.dispatch)
    for name in ("p1", "p2", "p3"):
        inventory.create(phone(name))
    ask(leases, need("Phone", name="p1"), holder="keeper", max_wait=0)
    big = ask(leases, need("Phone", count=3), holder="big")
    assert {reserved("p2"), reserved("p3")} == {big.waiter_id}

    inventory.set_out_of_service("p2", "fan broken")
    assert reserved("p2") is None
    assert reserved("p3") == big.waiter_id
    inventory.create(phone("p4"))  # a new one is offered to the request at once
    assert reserved("p4") == big.waiter_id
    inventory.return_to_service("p2")
    status = leases.wait_status(big.waiter_id)
    assert isinstance(status, Granted)
    assert sorted(g.resource.name for g in status.lease.grants) == ["p2", "p3", "p4"]


def test_requests_queued_without_keys_are_indexed_on_upgrade(database, inventory, leases, kinds):
    from broker.models.schema import create_tables

    inventory.create(calc("c1"))
    keeper = ask(leases, need("Calculator", name="c1"), holder="keeper", max_wait=0)
    waiting = ask(leases, need("Calculator", name="c1"), holder="alice")
    assert isinstance(waiting, Waiting)
    # As a broker of the layout before keys left it:
    database.drop_tables([WaiterNeed])
    create_tables(kinds.models)
    assert [(n.kind, n.name) for n in WaiterNeed.select()] == [("Calculator", "c1")]
    leases.release(keeper.lease.lease_id, keeper.secret)
    assert isinstance(leases.wait_status(waiting.waiter_id), Granted)


def test_keys_name_each_requirement_by_kind_and_names():
    requirements = (
        '[{"kind":"Calculator","constraints":[{"field":"name","values":["a","b"],"any_of":true}],'
        '"count":1,"label":""},{"kind":"Phone","constraints":[{"field":"os","values":["ios"],'
        '"any_of":false}],"count":2,"label":""}]'
    )
    assert queue_model.need_keys(requirements) == {
        ("Calculator", "a"),
        ("Calculator", "b"),
        ("Phone", ""),
    }


# ------------------------------------------------------------ randomised

NAMES = [f"c{i}" for i in range(6)]
PHONES = [f"p{i}" for i in range(3)]


def _random_request(rng: random.Random) -> tuple[Requirement, ...]:
    shape = rng.random()
    if shape < 0.3:
        return (need("Calculator", name=rng.choice(NAMES)),)
    if shape < 0.5:
        names = tuple(rng.sample(NAMES, rng.randint(2, 3)))
        return (Requirement("Calculator", (Constraint("name", names, Check.ANY_OF),), 1),)
    if shape < 0.7:
        return (need("Calculator", count=rng.randint(1, 3)),)
    if shape < 0.9:
        return (need("Calculator"), need("Phone"))
    return (need("Phone", count=2),)


def _full_pass_grants_nobody(leases, clock) -> None:
    """A full pass over the queue, rolled back: it must grant nobody."""

    class Undo(Exception):
        pass

    with pytest.raises(Undo), write_transaction():
        leases.queue.begin()
        leases.queue.replan(clock())
        granted = dict(leases.queue.granted)
        leases.queue.begin()
        assert granted == {}, f"a full pass would grant {sorted(granted)}"
        raise Undo


def _each_reserves_its_best(leases, clock) -> None:
    """In serving order, each waiting request reserves as many resources as
    its best assignment among those not reserved by requests ahead of it
    uses: no request is left short of a free resource it could use (which
    a later one could then take)."""
    for waiter in queue_model.waiting(WAITING):
        needs = leases.requests.check(AcquireRequest(decode_requirements(waiter.requirements)))[0]
        plan = planning.plan(
            needs, waiter.principal or waiter.holder, clock(), rank=(waiter.priority, waiter.id)
        )
        assert not plan.matching.complete, f"waiter {waiter.id} could be granted"
        holding = Resource.select().where(Resource.reserved_by == waiter.id).count()
        assert holding == len(plan.assigned_ownable()), (
            f"waiter {waiter.id} reserves {holding} but could reserve "
            f"{len(plan.assigned_ownable())}"
        )


def _keys_are_the_waiting_requests() -> None:
    waiting = {w.id for w in queue_model.waiting(WAITING)}
    keyed = {n.waiter_id for n in WaiterNeed.select(WaiterNeed.waiter)}
    assert keyed == waiting


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_every_operation_nobody_waits_who_could_be_served(
    database, kinds, leases, clock, seed
):
    rng = random.Random(seed)
    inventory = Inventory(kinds, clock, on_change=leases.dispatch)
    out_of_service: set[str] = set()
    for name in NAMES:
        inventory.create(calc(name))
    for name in PHONES:
        inventory.create(phone(name))
    granted: list[Granted] = []
    waiting: list[Waiting] = []
    for step in range(200):
        roll = rng.random()
        try:
            if roll < 0.55:
                outcome = ask(
                    leases,
                    *_random_request(rng),
                    holder=f"h{step}",
                    priority=rng.choice((-2, -1, 0, 0, 1, 2)),
                    max_wait=rng.choice((0.0, 600.0, 600.0, 600.0)),
                )
                (granted if isinstance(outcome, Granted) else waiting).append(outcome)
            elif roll < 0.85 and granted:
                lease = granted.pop(rng.randrange(len(granted)))
                leases.release(lease.lease.lease_id, lease.secret)
            elif roll < 0.93 and waiting:
                left = waiting.pop(rng.randrange(len(waiting)))
                leases.abandon(left.waiter_id, False)
            elif roll >= 0.93:
                name = rng.choice(NAMES + PHONES)
                if name in out_of_service:
                    inventory.return_to_service(name)
                    out_of_service.discard(name)
                else:
                    inventory.set_out_of_service(name, "maintenance")
                    out_of_service.add(name)
        except BrokerError:
            pass
        # Grants made by passes join the held leases.
        still = []
        for wait in waiting:
            status = leases.wait_status(wait.waiter_id)
            if isinstance(status, Granted):
                granted.append(status)
            else:
                still.append(wait)
        waiting = still
        _each_reserves_its_best(leases, clock)
        _full_pass_grants_nobody(leases, clock)
        _keys_are_the_waiting_requests()
