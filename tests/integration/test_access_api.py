"""Maintenance and reservations over the wire, with authentication on: the
reasons a refused or waiting request gets, the waiting request granted when
a reservation ends (by the broker's sweep), and the events, whose actor is
the verified principal."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from broker.api.convert import duration, timestamp
from broker.v1 import event_pb2, inventory_service_pb2, lease_pb2, lease_service_pb2
from tests.conftest import RPC_TIMEOUT
from tests.integration.auth_helpers import Caller
from tests.integration.helpers import (
    acquire_request,
    calculator,
    detail,
    expect_error,
    requirement,
)

WAIT = 10.0


@pytest.fixture
def callers(auth_broker):
    """`calc` in the inventory; `admin`, and the users `alice` and `bob`."""
    server, tokens = auth_broker
    with grpc.insecure_channel(server.address) as channel:
        made = {name: Caller(channel, tokens[name]) for name in ("admin", "alice", "bob")}
        made["admin"].inventory.CreateResource(
            inventory_service_pb2.CreateResourceRequest(resource=calculator("calc")),
            timeout=RPC_TIMEOUT,
            metadata=made["admin"].metadata,
        )
        yield made


def test_out_of_service_refuses_with_the_reason_and_back_in_service_grants(callers):
    admin, alice = callers["admin"], callers["alice"]

    taken = admin.inventory.SetOutOfService(
        inventory_service_pb2.SetOutOfServiceRequest(name="calc", reason="fan broken"),
        timeout=RPC_TIMEOUT,
        metadata=admin.metadata,
    ).resource

    assert (taken.is_usable, taken.service_reason) == (False, "fan broken")
    error = expect_error(
        alice.leases.AcquireLease,
        acquire_request(requirement("Calculator", name="calc")),
        grpc.StatusCode.FAILED_PRECONDITION,
        metadata=alice.metadata,
    )
    assert "calc is out of service: fan broken" in error.details()
    violations = detail(error, error_details_pb2.PreconditionFailure).violations
    assert [(v.type, v.subject) for v in violations[1:]] == [("OUT_OF_SERVICE", "resources/calc")]
    back = admin.inventory.ReturnToService(
        inventory_service_pb2.ReturnToServiceRequest(name="calc"),
        timeout=RPC_TIMEOUT,
        metadata=admin.metadata,
    ).resource
    assert (back.is_usable, back.service_reason) == (True, "")
    assert alice.acquire(requirement("Calculator", name="calc")).lease.grants
    [out] = admin.events(event_pb2.EVENT_TYPE_RESOURCE_OUT_OF_SERVICE)
    [returned] = admin.events(event_pb2.EVENT_TYPE_RESOURCE_BACK_IN_SERVICE)
    assert (out.resource, out.actor, out.reason) == ("calc", "admin", "fan broken")
    assert (returned.resource, returned.actor) == ("calc", "admin")


def test_a_waiter_is_told_whom_and_until_when_and_granted_when_the_reservation_ends(callers):
    admin, bob = callers["admin"], callers["bob"]
    until = time.time() + 1.5
    reserved = calculator("calc", reserved_for="alice", reservation_reason="demo")
    reserved.reserved_until.CopyFrom(timestamp(until))
    admin.inventory.UpdateResource(
        inventory_service_pb2.UpdateResourceRequest(
            resource=reserved,
            update_mask=field_mask_pb2.FieldMask(
                paths=["reserved_for", "reserved_until", "reservation_reason"]
            ),
        ),
        timeout=RPC_TIMEOUT,
        metadata=admin.metadata,
    )

    request = acquire_request(requirement("Calculator"))
    request.max_wait.CopyFrom(duration(WAIT))
    stream = bob.leases.WatchAcquireLease(
        lease_service_pb2.WatchAcquireLeaseRequest(request=request),
        timeout=WAIT,
        metadata=bob.metadata,
    )
    first = next(stream)
    [obstacle] = first.waiting.blocked.obstacles
    assert (obstacle.resource, obstacle.cause, obstacle.principal) == (
        "calc",
        lease_pb2.OBSTACLE_CAUSE_RESERVED,
        "alice",
    )
    assert obstacle.until.ToNanoseconds() == timestamp(until).ToNanoseconds()
    assert "calc is reserved for alice until" in obstacle.text
    granted = next(response for response in stream if response.HasField("granted"))

    assert [g.resource.name for g in granted.granted.lease.grants] == ["calc"]
    assert granted.granted.lease.principal == "bob"
    [event] = admin.events(event_pb2.EVENT_TYPE_RESOURCE_RESERVED)
    assert (event.actor, event.reason, event.detail["reserved_for"]) == ("admin", "demo", "alice")
    [ended] = admin.events(event_pb2.EVENT_TYPE_RESOURCE_UNRESERVED)
    assert ended.resource == "calc"
