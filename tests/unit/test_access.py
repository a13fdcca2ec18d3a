"""Who may be granted what, and why not: refusals that say why per
resource (no such name, out of service, reserved, held), maintenance,
reservations with and without an end, groups, quarantine after failed
setups, and the least recently granted resource chosen first."""

from __future__ import annotations

import pytest

from broker.domain.errors import FailedPreconditionError, ResourceBusyError
from broker.domain.leasing import Leases
from broker.domain.values import AcquireRequest, ObstacleCause, Requirement
from tests.unit.builders import calc, need


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
