"""Leasing through `Leases` and `Inventory` on a real SQLite database:
all or nothing, fail-fast refusals, TTLs on a fake clock, secrets, fencing,
shared kinds, revocation, events, and listing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from broker.domain import paging
from broker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceBusyError,
)
from broker.domain.leasing import Leases
from broker.domain.requests import MAX_RESOURCES
from broker.domain.values import (
    AcquireRequest,
    Constraint,
    EventType,
    LeaseState,
    Requirement,
    ResourcePatch,
)
from broker.models.database import bind, open_database
from broker.models.event import Event
from broker.models.lease import Lease
from tests.conftest import make_config
from tests.unit.builders import calc, events_of, field_of, licence, need, phone


def acquire(leases: Leases, *requirements: Requirement, ttl=None, holder="alice"):
    return leases.acquire(AcquireRequest(tuple(requirements), ttl, holder))


def holders_of(inventory, name: str) -> tuple[str, ...]:
    return inventory.get(name).lease_ids


def granted_names(granted) -> list[str]:
    return [grant.resource.name for grant in granted.lease.grants]


def violation_of(error: pytest.ExceptionInfo) -> tuple[str, str]:
    violation = error.value.violations[0]
    return violation.type, violation.subject


# ------------------------------------------------------------- granting


def test_grant_holds_the_resource_for_the_holder(inventory, leases, clock):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone", label="dut"), ttl=20, holder="alice")
    lease = granted.lease
    assert lease.state == LeaseState.ACTIVE
    assert lease.holder == "alice"
    assert (lease.create_time, lease.expire_time) == (clock.now, clock.now + 20)
    [grant] = lease.grants
    assert (grant.requirement_index, grant.label, grant.fencing_token) == (0, "dut", 1)
    assert grant.resource.name == "p1"
    assert grant.resource.owner == "alice"
    view = inventory.get("p1")
    assert view.lease_ids == (lease.lease_id,)
    assert view.owner == "alice"
    assert view.fencing_token == 1


def test_default_ttl_applies_when_none_is_given(inventory, leases, clock, config):
    inventory.create(phone("p1"))
    lease = acquire(leases, need("Phone")).lease
    assert lease.ttl == config.leases.default_ttl
    assert lease.expire_time == clock.now + config.leases.default_ttl


def test_count_zero_means_one(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    assert granted_names(acquire(leases, need("Phone", count=0))) == ["p1"]


def test_several_requirements_get_distinct_resources(inventory, leases):
    for name in ("p1", "p2", "p3"):
        inventory.create(phone(name))
    inventory.create(calc("c1"))
    granted = acquire(leases, need("Phone", count=2, label="a"), need("Calculator"), need("Phone"))
    slots = [(g.requirement_index, g.label) for g in granted.lease.grants]
    assert slots == [(0, "a"), (0, "a"), (1, ""), (2, "")]
    assert sorted(granted_names(granted)) == ["c1", "p1", "p2", "p3"]


def test_greedy_first_match_would_fail_but_an_assignment_is_found(inventory, leases):
    inventory.create(phone("p1", os="android"))
    inventory.create(phone("p2", os="ios"))
    granted = acquire(leases, need("Phone"), need("Phone", os="android"))
    by_requirement = {g.requirement_index: g.resource.name for g in granted.lease.grants}
    assert by_requirement == {0: "p2", 1: "p1"}


def test_constraints_select_by_typed_and_common_fields(inventory, leases):
    inventory.create(phone("p1", os="android", fields={"version": 13}, group="bench-1"))
    inventory.create(phone("p2", os="android", fields={"version": 14}, group="bench-2"))
    inventory.create(phone("p3", os="android", fields={"version": 14}, group="bench-1"))
    granted = acquire(leases, need("Phone", os="android", version=14, group="bench-1"))
    assert granted_names(granted) == ["p3"]
    any_of = Requirement("Phone", (Constraint("name", ("p9", "p2")),))
    assert granted_names(acquire(leases, any_of)) == ["p2"]


# ------------------------------------------------------- all or nothing


def test_all_or_nothing_grants_nothing_and_changes_nothing(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    first = acquire(leases, need("Phone", os="android", name="p1"), holder="alice")
    events_before = Event.select().count()
    with pytest.raises(ResourceBusyError):
        acquire(leases, need("Phone", count=2), holder="bob")
    assert holders_of(inventory, "p2") == ()
    assert inventory.get("p2").fencing_token == 0
    assert [row.id for row in Lease.select()] == [first.lease.lease_id]
    assert Event.select().count() == events_before


def test_all_or_nothing_across_requirements(inventory, leases):
    inventory.create(calc("c1"))
    inventory.create(phone("p1"))
    acquire(leases, need("Phone"), holder="alice")
    with pytest.raises(ResourceBusyError) as error:
        acquire(leases, need("Calculator"), need("Phone", label="dut"), holder="bob")
    assert (error.value.requirement_index, error.value.label) == (1, "dut")
    assert holders_of(inventory, "c1") == ()
    assert Lease.select().count() == 1


# ------------------------------------------- never (FAILED_PRECONDITION)


def test_unknown_kind_fails_fast(inventory, leases):
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone"), need("Toaster"))
    assert violation_of(error) == ("UNKNOWN_KIND", "requirements[1]")
    assert "Toaster" in error.value.message


def test_unknown_field_fails_fast(inventory, leases):
    inventory.create(phone("p1"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone", colour="red"))
    assert violation_of(error) == ("UNKNOWN_FIELD", "requirements[0].constraints[0]")
    assert Lease.select().count() == 0


def test_constraint_value_of_the_wrong_type_is_invalid(inventory, leases):
    inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        acquire(leases, need("Phone", version="fourteen"))
    assert field_of(error) == "requirements[0].constraints[0].equals"


def test_too_few_resources_fails_fast_even_when_some_are_held(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    acquire(leases, need("Phone"), holder="alice")
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone", count=3), holder="bob")
    assert violation_of(error) == ("UNSATISFIABLE", "requirements[0]")
    assert Lease.select().count() == 1


def test_too_few_matching_resources_are_counted_in_the_refusal(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone", count=3))
    assert "it needs 3 usable Phone resource(s) matching its constraints, and only 2 match" in (
        error.value.violations[0].description
    )


def test_requirements_that_compete_for_the_same_resources_are_told_so(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone", name="p1"), need("Phone", count=2))
    description = error.value.violations[0].description
    assert "it needs 2 usable Phone resource(s) matching its constraints and 2 match" in (
        description
    )
    assert "the request's other requirements need some of the same ones" in description
    assert "only" not in description


def test_no_matching_resource_fails_fast(inventory, leases):
    inventory.create(phone("p1", os="ios"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone", os="android"))
    assert violation_of(error) == ("UNSATISFIABLE", "requirements[0]")


def test_unusable_resources_are_never_granted(inventory, leases):
    inventory.create(phone("p1", is_usable=False))
    inventory.create(phone("p2"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Phone", count=2))
    assert violation_of(error) == ("UNSATISFIABLE", "requirements[0]")
    assert granted_names(acquire(leases, need("Phone"))) == ["p2"]
    with pytest.raises(ResourceBusyError):
        acquire(leases, need("Phone"), holder="bob")


def test_resource_marked_unusable_while_held_is_not_granted_again(inventory, leases):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    inventory.update(ResourcePatch("p1", ("is_usable",), {}, is_usable=False))
    leases.release(granted.lease.lease_id, granted.secret)
    with pytest.raises(FailedPreconditionError):
        acquire(leases, need("Phone"))


def test_reserved_for_is_honoured(inventory, leases):
    inventory.create(phone("p1", reserved_for="alice"))
    with pytest.raises(ResourceBusyError) as error:
        acquire(leases, need("Phone"), holder="bob")
    assert [o.principal for o in error.value.obstacles] == ["alice"]
    assert granted_names(acquire(leases, need("Phone"), holder="alice")) == ["p1"]


# --------------------------------------------- not now (RESOURCE_EXHAUSTED)


def test_held_resources_give_resource_busy_with_the_holders(inventory, leases):
    inventory.create(phone("p1"))
    first = acquire(leases, need("Phone"), ttl=40, holder="alice").lease
    with pytest.raises(ResourceBusyError) as error:
        acquire(leases, need("Phone", label="dut"), holder="bob")
    busy = error.value
    assert (busy.requirement_index, busy.label, busy.kind) == (0, "dut", "Phone")
    assert [dataclasses.astuple(h) for h in busy.holders] == [
        ("p1", first.lease_id, "alice", first.expire_time)
    ]
    assert "p1 is held by alice" in busy.message


# -------------------------------------------------------------- TTL


def test_expired_lease_frees_its_resources_on_the_next_acquire(inventory, leases, clock):
    inventory.create(phone("p1"))
    first = acquire(leases, need("Phone"), ttl=5, holder="alice").lease
    clock.advance(5)
    second = acquire(leases, need("Phone"), holder="bob")
    assert granted_names(second) == ["p1"]
    assert second.lease.grants[0].fencing_token == 2
    expired = leases.get(first.lease_id)
    assert expired.state == LeaseState.EXPIRED
    assert expired.end_time == clock.now
    assert [e.lease_id for e in events_of(EventType.LEASE_EXPIRED)] == [first.lease_id]


def test_expire_due_frees_expired_leases(inventory, leases, clock):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    short = acquire(leases, need("Phone", name="p1"), ttl=5).lease
    long = acquire(leases, need("Phone", name="p2"), ttl=50).lease
    clock.advance(4.9)
    assert leases.expire_due() == 0
    clock.advance(0.1)
    assert leases.expire_due() == 1
    assert leases.get(short.lease_id).state == LeaseState.EXPIRED
    assert leases.get(short.lease_id).end_reason
    assert leases.get(long.lease_id).state == LeaseState.ACTIVE
    assert holders_of(inventory, "p1") == ()
    assert holders_of(inventory, "p2") == (long.lease_id,)
    assert leases.expire_due() == 0


def test_expiry_on_acquire_frees_every_expired_lease(inventory, leases, clock):
    """However many leases ran out, none of them blocks an acquire."""
    inventory.create(licence("l1"))
    inventory.create(phone("p1"))
    for _ in range(500):
        acquire(leases, need("Licence"), ttl=10)
    acquire(leases, need("Phone"), ttl=20, holder="alice")
    clock.advance(30)
    assert granted_names(acquire(leases, need("Phone"), holder="bob")) == ["p1"]


def test_renew_extends_the_lease(inventory, leases, clock):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"), ttl=10)
    clock.advance(8)
    renewed = leases.renew(granted.lease.lease_id, granted.secret)
    assert renewed.expire_time == clock.now + 10
    assert renewed.state == LeaseState.ACTIVE
    clock.advance(8)
    assert leases.expire_due() == 0
    assert holders_of(inventory, "p1") == (granted.lease.lease_id,)
    clock.advance(2)
    assert leases.expire_due() == 1


@pytest.mark.parametrize("operation", ["renew", "release"])
def test_acting_on_an_expired_lease_reports_lease_expired(inventory, leases, clock, operation):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"), ttl=5)
    lease_id = granted.lease.lease_id
    clock.advance(6)
    with pytest.raises(FailedPreconditionError) as error:
        getattr(leases, operation)(lease_id, granted.secret)
    assert violation_of(error) == ("LEASE_EXPIRED", f"leases/{lease_id}")
    # The expiry found on the way is kept.
    assert leases.get(lease_id).state == LeaseState.EXPIRED
    assert holders_of(inventory, "p1") == ()
    assert len(events_of(EventType.LEASE_EXPIRED)) == 1


@pytest.mark.parametrize("operation", ["renew", "release"])
def test_acting_on_a_released_lease_reports_lease_released(inventory, leases, operation):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    leases.release(granted.lease.lease_id, granted.secret)
    with pytest.raises(FailedPreconditionError) as error:
        getattr(leases, operation)(granted.lease.lease_id, granted.secret)
    assert violation_of(error)[0] == "LEASE_RELEASED"


@pytest.mark.parametrize("operation", ["renew", "release"])
def test_acting_on_a_revoked_lease_reports_lease_revoked(inventory, leases, operation):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    leases.revoke(granted.lease.lease_id, "maintenance")
    with pytest.raises(FailedPreconditionError) as error:
        getattr(leases, operation)(granted.lease.lease_id, granted.secret)
    assert violation_of(error)[0] == "LEASE_REVOKED"
    with pytest.raises(FailedPreconditionError) as error:
        leases.revoke(granted.lease.lease_id, "again")
    assert violation_of(error)[0] == "LEASE_REVOKED"


def test_release_frees_the_resources(inventory, leases, clock):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"), holder="alice")
    clock.advance(3)
    released = leases.release(granted.lease.lease_id, granted.secret)
    assert released.state == LeaseState.RELEASED
    assert released.end_time == clock.now
    assert holders_of(inventory, "p1") == ()
    assert inventory.get("p1").owner == ""
    assert granted_names(acquire(leases, need("Phone"), holder="bob")) == ["p1"]


def test_unknown_or_missing_lease_id(leases):
    with pytest.raises(NotFoundError):
        leases.renew("00000000-0000-0000-0000-000000000000", "secret")
    with pytest.raises(NotFoundError):
        leases.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(InvalidArgumentError) as error:
        leases.release("", "secret")
    assert field_of(error) == "lease_id"


# ------------------------------------------------------------ secrets


@pytest.mark.parametrize("operation", ["renew", "release"])
def test_missing_secret_is_permission_denied(inventory, leases, operation):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    with pytest.raises(PermissionDeniedError) as error:
        getattr(leases, operation)(granted.lease.lease_id, "")
    assert error.value.reason == "NO_SECRET"
    assert leases.get(granted.lease.lease_id).state == LeaseState.ACTIVE


@pytest.mark.parametrize("operation", ["renew", "release"])
def test_another_leases_secret_is_permission_denied(inventory, leases, clock, operation):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    mine = acquire(leases, need("Phone", name="p1"), ttl=10, holder="alice")
    theirs = acquire(leases, need("Phone", name="p2"), holder="mallory")
    clock.advance(1)
    with pytest.raises(PermissionDeniedError) as error:
        getattr(leases, operation)(mine.lease.lease_id, theirs.secret)
    assert error.value.reason == "NOT_HOLDER"
    unchanged = leases.get(mine.lease.lease_id)
    assert unchanged.state == LeaseState.ACTIVE
    assert unchanged.expire_time == mine.lease.expire_time
    assert holders_of(inventory, "p1") == (mine.lease.lease_id,)


def test_reads_never_expose_the_secret(inventory, leases):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    view = leases.get(granted.lease.lease_id)
    listed = leases.list(None, "", "", 0, "").items
    for lease in (granted.lease, view, *listed):
        assert "secret" not in {field.name for field in dataclasses.fields(lease)}
        assert granted.secret not in repr(lease)
    row = Lease.get_by_id(granted.lease.lease_id)
    assert row.secret_hash != granted.secret
    assert granted.secret not in json.dumps(row.__data__)
    assert all(granted.secret not in json.dumps(e.__data__) for e in Event.select())


def test_each_lease_has_its_own_secret(inventory, leases):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    first = acquire(leases, need("Phone"))
    second = acquire(leases, need("Phone"))
    assert first.secret != second.secret
    assert len(first.secret) >= 32


# ------------------------------------------------------------ fencing


def test_fencing_tokens_strictly_increase_across_grants(inventory, leases, clock):
    inventory.create(phone("p1"))
    tokens = []
    for _ in range(3):
        granted = acquire(leases, need("Phone"), ttl=5)
        tokens.append(granted.lease.grants[0].fencing_token)
        leases.release(granted.lease.lease_id, granted.secret)
    expired = acquire(leases, need("Phone"), ttl=5)
    tokens.append(expired.lease.grants[0].fencing_token)
    clock.advance(5)
    tokens.append(acquire(leases, need("Phone")).lease.grants[0].fencing_token)
    assert tokens == sorted(set(tokens))
    assert inventory.get("p1").fencing_token == tokens[-1]


def test_fencing_tokens_keep_growing_after_reopening_the_database(
    inventory, leases, database, config
):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    leases.release(granted.lease.lease_id, granted.secret)
    before = granted.lease.grants[0].fencing_token
    database.close()
    reopened = open_database(config.database.url)
    bind(reopened)
    reopened.connect()
    try:
        again = acquire(leases, need("Phone"))
        assert again.lease.grants[0].fencing_token > before
        assert leases.get(granted.lease.lease_id).state == LeaseState.RELEASED
    finally:
        reopened.close()


def test_fencing_token_is_recorded_with_the_grant(inventory, leases):
    inventory.create(phone("p1"))
    acquire(leases, need("Phone"), ttl=5)  # leaves p1 at token 1, held
    inventory.create(phone("p2"))
    granted = acquire(leases, need("Phone"))
    assert [(g.resource.name, g.fencing_token) for g in granted.lease.grants] == [("p2", 1)]
    view = leases.get(granted.lease.lease_id)
    assert view.grants[0].fencing_token == 1
    assert view.grants[0].resource.fencing_token == 1


# -------------------------------------------------------- shared kinds


def test_non_ownable_kind_is_granted_to_several_leases_at_once(inventory, leases):
    inventory.create(licence("l1"))
    first = acquire(leases, need("Licence"), holder="alice").lease
    second = acquire(leases, need("Licence"), holder="bob").lease
    third = acquire(leases, need("Licence"), holder="carol").lease
    assert [lease.grants[0].fencing_token for lease in (first, second, third)] == [1, 2, 3]
    view = inventory.get("l1")
    assert view.lease_ids == (first.lease_id, second.lease_id, third.lease_id)
    assert view.owner == ""
    assert view.fencing_token == 3
    assert leases.get(first.lease_id).grants[0].resource.owner == ""


def test_shared_and_ownable_kinds_in_one_request(inventory, leases):
    inventory.create(licence("l1"))
    inventory.create(phone("p1"))
    acquire(leases, need("Licence"), need("Phone"), holder="alice")
    with pytest.raises(ResourceBusyError) as error:
        acquire(leases, need("Licence"), need("Phone"), holder="bob")
    assert error.value.requirement_index == 1
    assert inventory.get("l1").fencing_token == 1


def test_a_shared_resource_is_not_given_twice_in_one_request(inventory, leases):
    inventory.create(licence("l1"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, need("Licence", count=2))
    assert violation_of(error) == ("UNSATISFIABLE", "requirements[0]")


# ------------------------------------------------------------ revoke


def test_revoke_ends_the_lease_frees_and_records_the_reason(inventory, leases, clock):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"), holder="alice")
    clock.advance(2)
    revoked = leases.revoke(granted.lease.lease_id, "bench rewired", actor="admin")
    assert revoked.state == LeaseState.REVOKED
    assert revoked.end_reason == "bench rewired"
    assert revoked.end_time == clock.now
    assert holders_of(inventory, "p1") == ()
    [event] = events_of(EventType.LEASE_REVOKED)
    assert (event.resource, event.kind, event.lease_id, event.actor) == (
        "p1",
        "Phone",
        revoked.lease_id,
        "admin",
    )
    assert event.reason == "bench rewired"


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1025])
def test_revoke_requires_a_reason(inventory, leases, reason):
    inventory.create(phone("p1"))
    granted = acquire(leases, need("Phone"))
    with pytest.raises(InvalidArgumentError) as error:
        leases.revoke(granted.lease.lease_id, reason)
    assert field_of(error) == "reason"
    assert leases.get(granted.lease.lease_id).state == LeaseState.ACTIVE
    assert events_of(EventType.LEASE_REVOKED) == []


# ------------------------------------------------------------ events


def test_events_for_granted_released_expired_and_revoked(inventory, leases, clock):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    released = acquire(leases, need("Phone", count=2), holder="alice")
    leases.release(released.lease.lease_id, released.secret)
    expired = acquire(leases, need("Phone", name="p1"), ttl=5, holder="bob")
    revoked = acquire(leases, need("Phone", name="p2"), ttl=50, holder="carol")
    clock.advance(5)
    leases.expire_due()
    leases.revoke(revoked.lease.lease_id, "why not", actor="admin")
    lease_events = [
        (e.type, e.resource, e.lease_id, e.fencing_token, e.actor)
        for e in Event.select().where(Event.lease_id != "").order_by(Event.id)
    ]
    first, second, third = (g.lease.lease_id for g in (released, expired, revoked))
    # The two grants (and releases) of one lease come in no promised order.
    assert sorted(lease_events[:2]) == [
        ("lease_granted", "p1", first, 1, "alice"),
        ("lease_granted", "p2", first, 1, "alice"),
    ]
    assert sorted(lease_events[2:4]) == [
        ("lease_released", "p1", first, 1, "alice"),
        ("lease_released", "p2", first, 1, "alice"),
    ]
    assert lease_events[4:] == [
        ("lease_granted", "p1", second, 2, "bob"),
        ("lease_granted", "p2", third, 2, "carol"),
        ("lease_expired", "p1", second, 2, ""),
        ("lease_revoked", "p2", third, 2, "admin"),
    ]


# ----------------------------------------------------- argument bounds


@pytest.mark.parametrize("ttl", [0.0, 0.999, -5.0, 600.001, float("nan")])
def test_ttl_out_of_bounds_is_invalid(inventory, leases, ttl):
    inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        acquire(leases, need("Phone"), ttl=ttl)
    assert field_of(error) == "ttl"
    assert Lease.select().count() == 0


def test_ttl_bound_follows_the_configured_max_ttl(tmp_path, inventory, kinds, clock):
    config = make_config(tmp_path, default_ttl=5.0, max_ttl=10.0)
    short = Leases(
        kinds, default_ttl=config.leases.default_ttl, max_ttl=config.leases.max_ttl, clock=clock
    )
    inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        acquire(short, need("Phone"), ttl=10.5)
    assert field_of(error) == "ttl"
    assert acquire(short, need("Phone")).lease.ttl == 5.0


@pytest.mark.parametrize("ttl", [1.0, 600.0])
def test_ttl_bounds_are_inclusive(inventory, leases, clock, ttl):
    inventory.create(phone("p1"))
    assert acquire(leases, need("Phone"), ttl=ttl).lease.expire_time == clock.now + ttl


@pytest.mark.parametrize(
    ("requirements", "field"),
    [
        ((), "requirements"),
        ((need("Phone"),) * 17, "requirements"),
        ((need("Phone", count=-1),), "requirements[0].count"),
        ((need("Phone"), need("Phone", count=MAX_RESOURCES + 1)), "requirements[1].count"),
        ((need("Phone", count=40), need("Calculator", count=25)), "requirements"),
        ((need(""),), "requirements[0].kind"),
        ((need("Phone", label="x" * 65),), "requirements[0].label"),
        ((Requirement("Phone", (Constraint("os", ()),)),), "requirements[0].constraints[0]"),
        (
            (Requirement("Phone", (Constraint("", ("a",)),)),),
            "requirements[0].constraints[0].field",
        ),
    ],
)
def test_malformed_requests_are_invalid(inventory, leases, requirements, field):
    inventory.create(phone("p1"))
    with pytest.raises(InvalidArgumentError) as error:
        acquire(leases, *requirements)
    assert field_of(error) == field
    assert Lease.select().count() == 0


def test_holder_too_long_is_invalid(leases):
    with pytest.raises(InvalidArgumentError) as error:
        acquire(leases, need("Phone"), holder="h" * 129)
    assert field_of(error) == "holder"


def test_the_largest_request_is_granted(inventory, leases):
    for index in range(MAX_RESOURCES):
        inventory.create(phone(f"p{index:02}"))
    granted = acquire(leases, need("Phone", count=MAX_RESOURCES))
    assert len({g.resource.name for g in granted.lease.grants}) == MAX_RESOURCES


# ------------------------------------------------------------ listing


@pytest.fixture
def five_leases(inventory, leases, clock):
    """Five leases on p0..p4, one second apart, holders alternating."""
    granted = []
    for index in range(5):
        inventory.create(phone(f"p{index}"))
        holder = "alice" if index % 2 == 0 else "bob"
        granted.append(acquire(leases, need("Phone", name=f"p{index}"), holder=holder))
        clock.advance(1)
    return granted


def lease_ids(page) -> list[str]:
    return [lease.lease_id for lease in page.items]


def test_list_pages_newest_first(leases, five_leases):
    newest_first = [g.lease.lease_id for g in reversed(five_leases)]
    seen, token = [], ""
    for expected_size in (2, 2, 1):
        page = leases.list(None, "", "", 2, token)
        assert len(page.items) == expected_size
        seen += lease_ids(page)
        token = page.next_page_token
    assert token == ""
    assert seen == newest_first
    assert lease_ids(leases.list(None, "", "", 0, "")) == newest_first


def test_list_pages_leases_granted_at_the_same_instant(inventory, leases):
    for index in range(5):
        inventory.create(phone(f"p{index}"))
        acquire(leases, need("Phone"))
    seen, token = [], ""
    while True:
        page = leases.list(None, "", "", 2, token)
        seen += lease_ids(page)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(row.id for row in Lease.select())
    assert len(seen) == 5


def test_list_filters_by_state_holder_and_resource(leases, five_leases):
    released = five_leases[1]
    leases.release(released.lease.lease_id, released.secret)
    assert lease_ids(leases.list(LeaseState.RELEASED, "", "", 0, "")) == [released.lease.lease_id]
    assert len(leases.list(LeaseState.ACTIVE, "", "", 0, "").items) == 4
    assert leases.list(LeaseState.EXPIRED, "", "", 0, "").items == ()
    bob = leases.list(None, "bob", "", 0, "")
    assert {lease.holder for lease in bob.items} == {"bob"}
    assert len(bob.items) == 2
    assert lease_ids(leases.list(None, "", "p3", 0, "")) == [five_leases[3].lease.lease_id]
    assert lease_ids(leases.list(LeaseState.ACTIVE, "bob", "p1", 0, "")) == []


def test_list_filters_by_principal(inventory, leases):
    for name in ("p1", "p2", "p3"):
        inventory.create(phone(name))
    mine = leases.acquire(AcquireRequest((need("Phone"),), holder="ci@bench", principal="alice"))
    leases.acquire(AcquireRequest((need("Phone"),), holder="alice", principal="bob"))
    legacy = acquire(leases, need("Phone"), holder="alice")
    # A lease recorded before principals is its holder's.
    Lease.update(principal="").where(Lease.id == legacy.lease.lease_id).execute()

    listed = leases.list(None, "", "", 0, "", principal="alice")

    assert sorted(lease_ids(listed)) == sorted([mine.lease.lease_id, legacy.lease.lease_id])
    assert {lease.principal for lease in listed.items} == {"alice"}
    assert len(leases.list(None, "", "", 0, "", principal="bob").items) == 1
    assert leases.list(None, "", "", 0, "", principal="carol").items == ()


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "e30",  # {}
        paging.encode_token({"after": "p1"}),
        paging.encode_token({"time": "soon", "id": "x"}),
        paging.encode_token({"time": 1.0, "id": 7}),
    ],
)
def test_list_refuses_bad_page_tokens(leases, token):
    with pytest.raises(InvalidArgumentError) as error:
        leases.list(None, "", "", 0, token)
    assert field_of(error) == "page_token"


@pytest.mark.parametrize("size", [-1, 1001])
def test_list_refuses_bad_page_sizes(leases, size):
    with pytest.raises(InvalidArgumentError) as error:
        leases.list(None, "", "", size, "")
    assert field_of(error) == "page_size"


def test_ended_leases_read_from_their_snapshot(inventory, leases):
    inventory.create(phone("p1", group="bench"))
    granted = acquire(leases, need("Phone"))
    leases.release(granted.lease.lease_id, granted.secret)
    inventory.delete("p1", "")
    view = leases.get(granted.lease.lease_id)
    [grant] = view.grants
    assert grant.resource.name == "p1"
    assert grant.resource.group == "bench"
    assert grant.resource.fields["os"] == "android"
    assert (grant.resource.owner, grant.resource.lease_ids) == ("", ())


def test_a_resource_created_again_keeps_numbering_upwards(inventory, leases):
    """A device remembers the highest fencing number it saw; a resource
    deleted and created again under the same name must not start over."""
    inventory.create(calc("c1"))
    granted = acquire(leases, need("Calculator", name="c1"))
    leases.release(granted.lease.lease_id, granted.secret)
    inventory.delete("c1", "")
    inventory.create(calc("c1"))
    again = acquire(leases, need("Calculator", name="c1"))
    assert again.lease.grants[0].fencing_token > granted.lease.grants[0].fencing_token
