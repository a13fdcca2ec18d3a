"""A lease's maximum lifetime (`leases.max_lifetime`) on a fake clock: the
first expiry and every renewal, by `RenewLease` or by a session's
keep-alives, stop at create time plus the maximum; once there, renewing is
refused and the lease ends at it."""

from __future__ import annotations

import pytest

from broker.domain.errors import FailedPreconditionError
from broker.domain.leasing import Leases
from broker.domain.sessions import Sessions
from broker.domain.values import AcquireRequest, LeaseState
from tests.unit.builders import need, phone

MAX_LIFETIME = 25.0


@pytest.fixture
def capped(database, kinds, clock, config) -> Leases:
    return Leases(
        kinds,
        default_ttl=config.leases.default_ttl,
        max_ttl=config.leases.max_ttl,
        max_lifetime=MAX_LIFETIME,
        clock=clock,
    )


def acquire(leases: Leases, ttl: float, session_id: str = ""):
    return leases.acquire(
        AcquireRequest((need("Phone"),), ttl=ttl, holder="alice", session_id=session_id)
    )


def test_a_renewal_past_the_maximum_is_clipped_then_refused(inventory, capped, clock):
    inventory.create(phone("p1"))
    granted = acquire(capped, ttl=10)
    lease_id, created = granted.lease.lease_id, granted.lease.create_time
    assert granted.lease.max_expire_time == created + MAX_LIFETIME
    clock.advance(8)
    assert capped.renew(lease_id, granted.secret).expire_time == clock.now + 10
    clock.advance(8)
    clipped = capped.renew(lease_id, granted.secret)
    assert clipped.expire_time == created + MAX_LIFETIME == clipped.max_expire_time
    clock.advance(1)
    with pytest.raises(FailedPreconditionError) as error:
        capped.renew(lease_id, granted.secret)
    violation = error.value.violations[0]
    assert (violation.type, violation.subject) == ("MAX_LIFETIME", f"leases/{lease_id}")
    assert "maximum lifetime of 25 s (leases.max_lifetime)" in violation.description
    assert "release it and acquire again" in violation.description
    assert capped.get(lease_id).expire_time == created + MAX_LIFETIME  # the refusal changed nothing
    clock.advance(created + MAX_LIFETIME - clock.now)
    assert capped.expire_due() == 1
    assert capped.get(lease_id).state == LeaseState.EXPIRED


def test_the_first_expiry_is_capped_too(inventory, capped, clock):
    inventory.create(phone("p1"))
    lease = acquire(capped, ttl=100).lease
    assert lease.expire_time == clock.now + MAX_LIFETIME == lease.max_expire_time


def test_no_maximum_by_default(inventory, leases, clock):
    inventory.create(phone("p1"))
    granted = acquire(leases, ttl=10)
    assert granted.lease.max_expire_time is None
    for _ in range(10):
        clock.advance(8)
        assert leases.renew(granted.lease.lease_id, granted.secret).expire_time == clock.now + 10


def test_session_keep_alives_stop_at_the_maximum(inventory, capped, clock):
    sessions = Sessions(capped, keepalive_timeout=10.0, max_keepalive_timeout=60.0)
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    lease = acquire(capped, ttl=10, session_id=session.session_id).lease
    cap = lease.create_time + MAX_LIFETIME
    expiries = []
    for _ in range(4):
        clock.advance(8)
        sessions.keep_alive(session.session_id)
        expiries.append(capped.get(lease.lease_id).expire_time)
    assert expiries == [lease.create_time + 18, cap, cap, cap]
    clock.advance(cap - clock.now)
    sessions.keep_alive(session.session_id)
    assert capped.expire_due() == 1
    assert capped.get(lease.lease_id).state == LeaseState.EXPIRED
