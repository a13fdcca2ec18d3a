"""Who may be granted what, and why not: refusals that say why per
resource (no such name, out of service, reserved, held), maintenance,
reservations with and without an end, groups, quarantine after failed
setups, and the least recently granted resource chosen first."""

from __future__ import annotations

import pytest

from broker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceBusyError,
)
from broker.domain.granting import when
from broker.domain.inventory import Inventory
from broker.domain.leasing import Leases
from broker.domain.values import (
    AcquireRequest,
    EventType,
    Granted,
    ObstacleCause,
    Requirement,
    ResourcePatch,
    Waiting,
)
from tests.unit.builders import calc, events_of, need


def acquire(leases: Leases, *requirements: Requirement, holder="alice", **options):
    return leases.acquire(AcquireRequest(tuple(requirements), holder=holder, **options))


def refused(leases: Leases, *requirements: Requirement, holder="alice", **options):
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, *requirements, holder=holder, **options)
    return error.value


def busy(leases: Leases, *requirements: Requirement, holder="alice", **options):
    with pytest.raises(ResourceBusyError) as error:
        acquire(leases, *requirements, holder=holder, **options)
    return error.value


def causes(error: FailedPreconditionError) -> list[tuple[str, str]]:
    """The per-resource violations after the first (UNSATISFIABLE) one."""
    assert error.violations[0].type == "UNSATISFIABLE"
    return [(v.type, v.subject) for v in error.violations[1:]]


# ---------------------------------------------------------------- refusals


def test_a_mistyped_name_is_refused_as_no_such_resource(inventory, leases):
    inventory.create(calc("calc"))

    error = refused(leases, need("Calculator", name="calx"))

    assert "no Calculator resource is named 'calx'" in error.message
    assert causes(error) == [("NO_SUCH_RESOURCE", "requirements[0]")]


def test_an_unusable_resource_is_refused_with_its_reason(inventory, leases):
    inventory.create(calc("calc", is_usable=False, comment="screen broken"))

    error = refused(leases, need("Calculator", name="calc"))

    assert "calc is out of service: screen broken" in error.message
    assert causes(error) == [("OUT_OF_SERVICE", "resources/calc")]


def test_a_resource_reserved_for_another_for_good_is_refused_naming_whom(inventory, leases):
    inventory.create(calc("calc", reserved_for="bob"))

    error = refused(leases, need("Calculator", name="calc"), holder="alice")

    assert "calc is reserved for bob" in error.message
    assert causes(error) == [("RESERVED", "resources/calc")]
    assert acquire(leases, need("Calculator", name="calc"), holder="bob").lease.grants


def test_a_held_resource_is_busy_naming_its_holder(inventory, leases):
    inventory.create(calc("calc"))
    acquire(leases, need("Calculator"), holder="alice")

    error = busy(leases, need("Calculator"), holder="bob")

    [obstacle] = error.obstacles
    assert (obstacle.resource, obstacle.cause, obstacle.principal) == (
        "calc",
        ObstacleCause.HELD,
        "alice",
    )
    assert "calc is held by alice" in error.message


# ------------------------------------------------------------- maintenance


@pytest.fixture
def admin(kinds, clock, leases) -> Inventory:
    """The inventory as the server wires it: changes serve waiting requests."""
    return Inventory(kinds, clock, on_change=leases.dispatch)


def test_out_of_service_is_never_granted_and_says_why(admin, leases):
    admin.create(calc("calc"))

    view = admin.set_out_of_service("calc", "screen broken, LAB-12", actor="root")

    assert (view.is_usable, view.service_reason) == (False, "screen broken, LAB-12")
    error = refused(leases, need("Calculator", name="calc"))
    assert "calc is out of service: screen broken, LAB-12" in error.message
    assert causes(error) == [("OUT_OF_SERVICE", "resources/calc")]
    [event] = events_of(EventType.RESOURCE_OUT_OF_SERVICE)
    assert (event.resource, event.actor, event.reason) == ("calc", "root", "screen broken, LAB-12")


def test_back_in_service_grants_the_waiting_request(admin, leases):
    admin.create(calc("calc"))
    held = acquire(leases, need("Calculator"), holder="alice")
    waiting = acquire(leases, need("Calculator"), holder="bob", max_wait=60)
    admin.set_out_of_service("calc", "recalibrate")
    leases.release(held.lease.lease_id, held.secret)
    still = leases.wait_status(waiting.waiter_id)
    assert isinstance(still, Waiting)
    assert [o.cause for o in still.blocked.obstacles] == [ObstacleCause.OUT_OF_SERVICE]

    view = admin.return_to_service("calc", actor="root")

    assert (view.is_usable, view.service_reason) == (True, "")
    granted = leases.wait_status(waiting.waiter_id)
    assert isinstance(granted, Granted)
    assert granted.lease.principal == "bob"
    [event] = events_of(EventType.RESOURCE_BACK_IN_SERVICE)
    assert (event.resource, event.actor) == ("calc", "root")


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1025])
def test_out_of_service_needs_a_reason_and_changes_nothing_without(admin, reason):
    admin.create(calc("calc"))

    with pytest.raises(InvalidArgumentError) as error:
        admin.set_out_of_service("calc", reason)

    assert error.value.violations[0].field == "reason"
    assert admin.get("calc").is_usable
    assert events_of(EventType.RESOURCE_OUT_OF_SERVICE) == []


def test_out_of_service_of_an_unknown_resource_is_not_found(admin):
    with pytest.raises(NotFoundError):
        admin.set_out_of_service("nope", "gone")
    with pytest.raises(NotFoundError):
        admin.return_to_service("nope")


# ------------------------------------------------------------ reservations


def test_a_reservation_with_an_end_makes_others_wait_and_then_grants_them(admin, leases, clock):
    admin.create(calc("calc"))
    until = clock() + 600
    admin.update(
        ResourcePatch(
            "calc",
            ("reserved_for", "reserved_until", "reservation_reason"),
            {},
            reserved_for="bob",
            reserved_until=until,
            reservation_reason="demo",
        ),
        actor="root",
    )

    waiting = acquire(leases, need("Calculator"), holder="alice", max_wait=3600)

    assert isinstance(waiting, Waiting)
    [obstacle] = waiting.blocked.obstacles
    assert (obstacle.cause, obstacle.principal, obstacle.until) == (
        ObstacleCause.RESERVED,
        "bob",
        until,
    )
    assert f"calc is reserved for bob until {when(until)}: demo" == obstacle.text
    error = busy(leases, need("Calculator"), holder="carol")
    assert f"reserved for bob until {when(until)}" in error.message
    clock.advance(601)
    leases.expire_due()  # the sweep's queue pass
    granted = leases.wait_status(waiting.waiter_id)
    assert isinstance(granted, Granted) and granted.lease.principal == "alice"
    view = admin.get("calc")
    assert (view.reserved_for, view.reserved_until) == ("", None)
    [reserved] = events_of(EventType.RESOURCE_RESERVED)
    assert (reserved.actor, reserved.reason) == ("root", "demo")
    [ended] = events_of(EventType.RESOURCE_UNRESERVED)
    assert ended.resource == "calc" and "bob" in ended.detail


def test_the_principal_a_resource_is_reserved_for_is_granted_it(admin, leases, clock):
    admin.create(calc("calc", reserved_for="bob", reserved_until=clock() + 60))

    granted = acquire(leases, need("Calculator"), holder="bob")

    assert [g.resource.name for g in granted.lease.grants] == ["calc"]


def test_a_past_end_means_no_reservation(admin, leases, clock):
    admin.create(calc("calc", reserved_for="bob", reserved_until=clock() - 1))

    granted = acquire(leases, need("Calculator"), holder="alice")

    assert granted.lease.principal == "alice"


def test_removing_a_reservation_grants_the_waiting_request_and_is_recorded(admin, leases, clock):
    admin.create(calc("calc", reserved_for="bob", reserved_until=clock() + 3600))
    waiting = acquire(leases, need("Calculator"), holder="alice", max_wait=60)

    admin.update(ResourcePatch("calc", ("reserved_for",), {}, reserved_for=""), actor="root")

    assert isinstance(leases.wait_status(waiting.waiter_id), Granted)
    [event] = events_of(EventType.RESOURCE_UNRESERVED)
    assert event.actor == "root"


def test_an_end_without_whom_is_refused(admin, clock):
    with pytest.raises(InvalidArgumentError) as error:
        admin.create(calc("calc", reserved_until=clock() + 60))

    assert error.value.violations[0].field == "resource.reserved_until"
