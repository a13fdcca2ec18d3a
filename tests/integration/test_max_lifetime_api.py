"""A lease's maximum lifetime over the wire: `Lease.max_expire_time` is
create time plus `leases.max_lifetime`, the first expiry stops there, and a
renewal of a lease already there is FAILED_PRECONDITION (`MAX_LIFETIME`)."""

from __future__ import annotations

import grpc
import pytest

from broker.v1 import lease_service_pb2
from tests.conftest import make_config
from tests.integration.helpers import acquire, expect_error, get_lease, precondition, requirement

MAX_LIFETIME = 5.0


@pytest.fixture
def config(tmp_path, database_url):
    return make_config(tmp_path, database_url, max_lifetime=MAX_LIFETIME)


def seconds(timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def test_a_lease_at_its_maximum_lifetime_cannot_be_renewed(lease_stub, calculators):
    granted = acquire(lease_stub, requirement("Calculator", name="calc-1"), ttl=60)
    lease = granted.lease
    assert seconds(lease.max_expire_time) - seconds(lease.create_time) == pytest.approx(
        MAX_LIFETIME, abs=1e-6
    )
    assert lease.expire_time == lease.max_expire_time

    renewal = lease_service_pb2.RenewLeaseRequest(lease_id=lease.lease_id, secret=granted.secret)
    error = expect_error(lease_stub.RenewLease, renewal, grpc.StatusCode.FAILED_PRECONDITION)

    violation = precondition(error)
    assert (violation.type, violation.subject) == ("MAX_LIFETIME", f"leases/{lease.lease_id}")
    assert "maximum lifetime of 5 s (leases.max_lifetime)" in error.details()
    assert "release it and acquire again" in error.details()
    assert get_lease(lease_stub, lease.lease_id).expire_time == lease.max_expire_time
