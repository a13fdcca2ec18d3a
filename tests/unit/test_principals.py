"""Leases belong to principals: the verified caller owns what it acquires,
`reserved_for` goes by it, and only it may renew or release, secret or not.
The holder is a description beside it."""

from __future__ import annotations

import pytest

from broker.domain.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceBusyError,
)
from broker.domain.values import AcquireRequest, EventType
from tests.unit.builders import calc, events_of, need


def acquire(leases, principal: str, holder: str = "ci@bench-3", **kwargs):
    return leases.acquire(
        AcquireRequest((need("Calculator"),), holder=holder, principal=principal, **kwargs)
    )


def test_a_lease_records_its_principal_and_its_holder(inventory, leases):
    inventory.create(calc("calc-1"))
    granted = acquire(leases, "alice")
    assert (granted.lease.principal, granted.lease.holder) == ("alice", "ci@bench-3")
    assert inventory.get("calc-1").owner == "alice"
    assert [e.actor for e in events_of(EventType.LEASE_GRANTED)] == ["alice"]
    [listed] = leases.list(None, "", "", 0, "").items
    assert (listed.principal, listed.holder) == ("alice", "ci@bench-3")


def test_another_principal_cannot_renew_or_release_even_with_the_secret(inventory, leases):
    inventory.create(calc("calc-1"))
    granted = acquire(leases, "alice")
    lease_id, secret = granted.lease.lease_id, granted.secret
    for act in (leases.renew, leases.release):
        with pytest.raises(PermissionDeniedError, match="another principal"):
            act(lease_id, secret, "bob")
    assert leases.renew(lease_id, secret, "alice").principal == "alice"
    released = leases.release(lease_id, secret, "alice")
    assert [e.actor for e in events_of(EventType.LEASE_RELEASED)] == ["alice"]
    assert released.principal == "alice"


def test_without_a_principal_the_secret_suffices(inventory, leases):
    inventory.create(calc("calc-1"))
    granted = leases.acquire(AcquireRequest((need("Calculator"),), holder="alice@host"))
    assert granted.lease.principal == "alice@host"
    assert leases.renew(granted.lease.lease_id, granted.secret).principal == "alice@host"


def test_a_reservation_is_for_a_principal_whatever_holder_is_named(inventory, leases):
    inventory.create(calc("calc-1", reserved_for="alice"))
    with pytest.raises(ResourceBusyError):
        acquire(leases, "bob", holder="alice")
    assert acquire(leases, "alice", holder="anything").lease.principal == "alice"


def test_a_request_id_replayed_by_another_principal_gets_nothing(inventory, leases):
    inventory.create(calc("calc-1"))
    acquire(leases, "alice", request_id="r-1")
    with pytest.raises(InvalidArgumentError):
        acquire(leases, "bob", request_id="r-1")
