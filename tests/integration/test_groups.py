"""Groups over the wire, with authentication on: a resource with a group
exists only for principals of that group (and administrators). Others do
not see it in reads, are never granted it, waiting or not, and a request
only it could serve fails as for a missing resource."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2

from broker.domain.tokens import Tokens
from broker.v1 import (
    inventory_service_pb2,
    lease_service_pb2,
)
from tests.conftest import RPC_TIMEOUT
from tests.integration.auth_helpers import Caller
from tests.integration.helpers import (
    acquire_request,
    calculator,
    detail,
    expect_error,
    requirement,
    wait_until,
)

WAIT = 10.0


@pytest.fixture
def lab(auth_broker):
    """`lab-calc` in group lab-a and `open-calc` in none; callers: `gina`
    (a user of lab-a), `hank` (a user of no group), and `admin`."""
    server, tokens = auth_broker
    made = Tokens()
    tokens = {
        **tokens,
        "gina": made.create("gina", "user", groups=["lab-a"])[1],
        "hank": made.create("hank", "user")[1],
    }
    with grpc.insecure_channel(server.address) as channel:
        callers = {name: Caller(channel, tokens[name]) for name in ("gina", "hank", "admin")}
        for message in (calculator("lab-calc", group="lab-a"), calculator("open-calc")):
            callers["admin"].inventory.CreateResource(
                inventory_service_pb2.CreateResourceRequest(resource=message),
                timeout=RPC_TIMEOUT,
                metadata=callers["admin"].metadata,
            )
        yield callers


def test_a_grouped_resource_does_not_exist_for_others(lab):
    hank, gina, admin = lab["hank"], lab["gina"], lab["admin"]

    missing = expect_error(
        hank.inventory.GetResource,
        inventory_service_pb2.GetResourceRequest(name="lab-calc"),
        grpc.StatusCode.NOT_FOUND,
        metadata=hank.metadata,
    )
    absent = expect_error(
        hank.inventory.GetResource,
        inventory_service_pb2.GetResourceRequest(name="no-calc"),
        grpc.StatusCode.NOT_FOUND,
        metadata=hank.metadata,
    )

    assert missing.details() == absent.details().replace("no-calc", "lab-calc")
    assert hank.names() == ["open-calc"]
    assert gina.names() == ["lab-calc", "open-calc"]
    assert admin.names() == ["lab-calc", "open-calc"]


def test_a_request_only_a_grouped_resource_could_serve_fails_fast_for_others(lab):
    hank, gina = lab["hank"], lab["gina"]

    error = expect_error(
        hank.leases.AcquireLease,
        acquire_request(requirement("Calculator", name="lab-calc")),
        grpc.StatusCode.FAILED_PRECONDITION,
        metadata=hank.metadata,
    )

    assert "no Calculator resource is named 'lab-calc'" in error.details()
    violations = detail(error, error_details_pb2.PreconditionFailure).violations
    assert [v.type for v in violations] == ["UNSATISFIABLE", "NO_SUCH_RESOURCE"]
    granted = gina.acquire(requirement("Calculator", name="lab-calc"))
    assert [g.resource.name for g in granted.lease.grants] == ["lab-calc"]
    # Nor do others' leases show it: to hank, a lease of it does not exist.
    assert hank.granted_names() == []
    assert gina.granted_names() == ["lab-calc"]
    listed = hank.leases.ListLeases(
        lease_service_pb2.ListLeasesRequest(), timeout=RPC_TIMEOUT, metadata=hank.metadata
    )
    assert list(listed.leases) == []
    expect_error(
        hank.leases.GetLease,
        lease_service_pb2.GetLeaseRequest(lease_id=granted.lease.lease_id),
        grpc.StatusCode.NOT_FOUND,
        metadata=hank.metadata,
    )


def test_others_are_never_granted_a_grouped_resource_even_waiting(lab):
    hank, gina, admin = lab["hank"], lab["gina"], lab["admin"]
    first = hank.acquire(requirement("Calculator"))
    assert [g.resource.name for g in first.lease.grants] == ["open-calc"]
    busy = expect_error(
        hank.leases.AcquireLease,
        acquire_request(requirement("Calculator")),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        metadata=hank.metadata,
    )
    assert "lab-calc" not in busy.details()
    held_by_gina = gina.acquire(requirement("Calculator", name="lab-calc"))

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(hank.acquire, requirement("Calculator"), max_wait=WAIT)
        wait_until(
            lambda: (
                admin.leases.ListWaiters(
                    lease_service_pb2.ListWaitersRequest(),
                    timeout=RPC_TIMEOUT,
                    metadata=admin.metadata,
                ).waiters
            ),
            WAIT,
            "hank to wait",
        )
        gina.release(held_by_gina)  # free, but not for hank
        hank.release(first)
        granted = waiting.result(WAIT)

    assert [g.resource.name for g in granted.lease.grants] == ["open-calc"]
