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
    PermissionDeniedError,
    ResourceBusyError,
)
from broker.domain.events import EventLog
from broker.domain.inventory import Inventory
from broker.domain.leasing import Leases
from broker.domain.refusals import when
from broker.domain.usage import Usage
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


def test_a_reservation_without_an_end_makes_others_wait_until_it_is_removed(admin, leases):
    admin.create(calc("calc", reserved_for="bob"))

    error = busy(leases, need("Calculator", name="calc"), holder="alice")
    [obstacle] = error.obstacles
    assert (obstacle.cause, obstacle.principal, obstacle.until) == (
        ObstacleCause.RESERVED,
        "bob",
        None,
    )
    assert "calc is reserved for bob" in error.message
    waiting = acquire(leases, need("Calculator", name="calc"), holder="alice", max_wait=3600)
    assert isinstance(waiting, Waiting)
    assert waiting.blocked.obstacles[0].text == "calc is reserved for bob"

    admin.update(ResourcePatch("calc", ("reserved_for",), {}, reserved_for=""))

    granted = leases.wait_status(waiting.waiter_id)
    assert isinstance(granted, Granted) and granted.lease.principal == "alice"


def test_the_principal_of_a_reservation_without_an_end_is_granted_at_once(admin, leases):
    admin.create(calc("calc", reserved_for="bob"))

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


# -------------------------------------------------------------- quarantine


@pytest.fixture
def strict(database, kinds, clock, config) -> Leases:
    """Leases that quarantine a resource after three failed setups in a row."""
    return Leases(
        kinds,
        default_ttl=config.leases.default_ttl,
        max_ttl=config.leases.max_ttl,
        quarantine_after=3,
        clock=clock,
    )


def report(leases: Leases, ok: bool, error: str = "", resource: str = "calc", holder="alice"):
    granted = acquire(leases, need("Calculator", name="calc"), holder=holder)
    lease_id = granted.lease.lease_id
    outcome = leases.report_setup(lease_id, granted.secret, resource, ok, error)
    leases.release(lease_id, granted.secret)
    return outcome


def test_failed_setups_in_a_row_quarantine_the_resource(admin, strict):
    admin.create(calc("calc"))

    outcomes = [report(strict, False, f"timeout {n}") for n in range(3)]

    assert [(o.setup_failures, o.quarantined) for o in outcomes] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    view = admin.get("calc")
    assert not view.is_usable
    assert "quarantined after 3 failed setups" in view.service_reason
    assert "timeout 2" in view.service_reason
    error = refused(strict, need("Calculator", name="calc"))
    assert causes(error) == [("OUT_OF_SERVICE", "resources/calc")]
    assert "quarantined" in error.message
    [event] = events_of(EventType.RESOURCE_QUARANTINED)
    assert (event.resource, event.actor) == ("calc", "alice")
    admin.return_to_service("calc")
    assert admin.get("calc").setup_failures == 0


def test_a_successful_setup_resets_the_count(admin, strict):
    admin.create(calc("calc"))

    report(strict, False, "flaky")
    report(strict, False, "flaky")
    assert report(strict, True).setup_failures == 0
    report(strict, False, "flaky")
    report(strict, False, "flaky")

    assert admin.get("calc").is_usable
    assert admin.get("calc").setup_failures == 2
    assert events_of(EventType.RESOURCE_QUARANTINED) == []


def test_zero_failures_never_quarantines(admin, leases):
    admin.create(calc("calc"))

    for _ in range(5):
        report(leases, False, "broken")

    assert admin.get("calc").is_usable


def test_reporting_on_a_resource_not_in_the_lease_is_refused(admin, strict):
    admin.create(calc("calc"))
    admin.create(calc("other"))

    with pytest.raises(FailedPreconditionError) as error:
        report(strict, False, "x", resource="other")

    assert error.value.violations[0].type == "NOT_IN_LEASE"
    assert admin.get("other").setup_failures == 0


def test_reporting_needs_the_lease_secret(admin, strict):
    admin.create(calc("calc"))
    granted = acquire(strict, need("Calculator"))

    with pytest.raises(PermissionDeniedError):
        strict.report_setup(granted.lease.lease_id, "wrong", "calc", False, "x")

    assert admin.get("calc").setup_failures == 0


# ---------------------------------------------------- least recently granted


def test_free_resources_are_granted_least_recently_granted_first(admin, leases, clock):
    for name in ("calc-1", "calc-2", "calc-3"):
        admin.create(calc(name))

    order = []
    for _ in range(6):
        granted = acquire(leases, need("Calculator"))
        order.append(granted.lease.grants[0].resource.name)
        leases.release(granted.lease.lease_id, granted.secret)
        clock.advance(1)

    assert order == ["calc-1", "calc-2", "calc-3", "calc-1", "calc-2", "calc-3"]
    assert admin.get("calc-3").last_grant_time == clock() - 1


def test_quarantines_count_in_the_usage_statistics(admin, strict, clock):
    admin.create(calc("calc"))
    for _ in range(3):
        report(strict, False, "dead")
    admin.return_to_service("calc")
    for _ in range(3):
        report(strict, False, "dead again")

    [stats] = Usage(EventLog(clock), clock).stats("calc", "", None, None, by_kind=False)

    assert (stats.grants, stats.quarantines) == (6, 2)


def test_usable_again_through_an_update_forgets_the_reason(admin):
    admin.create(calc("calc"))
    admin.set_out_of_service("calc", "broken")

    view = admin.update(ResourcePatch("calc", ("is_usable",), {}, is_usable=True))

    assert (view.is_usable, view.service_reason, view.setup_failures) == (True, "", 0)
