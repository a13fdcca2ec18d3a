"""The SDK never takes an ended lease for one it holds: a lease returned by
an acquire, a watched acquire's grant or a renewal that is not active raises
`LeaseNotActiveError`, naming its state and why it ended; so do `lease` and
`lease_many`, and the background renewal marks a held lease lost.

`EndedLeaseService` is a fault injector: a small gRPC server standing in for
a broker that misbehaves, answering with leases that have already ended.
Against the real broker, a replayed `request_id` whose lease ended raises
too.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import duration_pb2

from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc, resource_pb2
from resources.calculator.data import CalculatorData
from resources.calculator.resource import Calculator
from sdk import (
    BaseResource,
    BrokerClient,
    FailedPreconditionError,
    Granted,
    LeaseNotActiveError,
    request,
)
from tests.integration.helpers import wait_until
from tests.sdk.helpers import WAIT, calc_requirement

RELEASED, EXPIRED, ACTIVE = (
    lease_pb2.LEASE_STATE_RELEASED,
    lease_pb2.LEASE_STATE_EXPIRED,
    lease_pb2.LEASE_STATE_ACTIVE,
)
END_REASONS = {ACTIVE: "", RELEASED: "released by its holder", EXPIRED: "its TTL ran out"}


def lease_in(state: int) -> lease_pb2.Lease:
    return lease_pb2.Lease(
        lease_id="L1",
        holder="tester@bench",
        state=state,
        end_reason=END_REASONS[state],
        ttl=duration_pb2.Duration(seconds=1),
        grants=[
            lease_pb2.Grant(
                requirement_index=0,
                resource=resource_pb2.Resource(name="calc", kind="Calculator"),
                fencing_token=1,
            )
        ],
    )


class EndedLeaseService(lease_service_pb2_grpc.LeaseServiceServicer):
    """Grants leases in `granted` state and renews them into `renewed`
    state; counts the renewals."""

    def __init__(self, granted: int, renewed: int) -> None:
        self.granted = granted
        self.renewed = renewed
        self.renewals = 0

    def AcquireLease(self, request, context):
        return lease_service_pb2.AcquireLeaseResponse(lease=lease_in(self.granted), secret="s")

    def WatchAcquireLease(self, request, context):
        granted = lease_service_pb2.AcquireLeaseResponse(lease=lease_in(self.granted), secret="s")
        yield lease_service_pb2.WatchAcquireLeaseResponse(granted=granted)

    def RenewLease(self, request, context):
        self.renewals += 1
        return lease_service_pb2.RenewLeaseResponse(lease=lease_in(self.renewed))

    def ReleaseLease(self, request, context):
        return lease_service_pb2.ReleaseLeaseResponse(lease=lease_in(RELEASED))


@pytest.fixture
def misbehaving():
    """`misbehaving(granted, renewed)`: the service and a client of it."""
    started = []

    def start(granted: int, renewed: int = EXPIRED):
        service = EndedLeaseService(granted, renewed)
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        lease_service_pb2_grpc.add_LeaseServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        client = BrokerClient(f"127.0.0.1:{port}", holder="tester@bench", session=False)
        started.append((server, client))
        return service, client

    yield start
    for server, client in started:
        client.close()
        server.stop(0)


def assert_names_the_end(error: LeaseNotActiveError, state: int) -> None:
    assert error.lease.state == state
    assert lease_pb2.LeaseState.Name(state) in str(error)
    assert END_REASONS[state] in str(error)


def test_acquire_raises_on_a_lease_that_ended(misbehaving):
    _, client = misbehaving(granted=RELEASED)

    with pytest.raises(LeaseNotActiveError) as raised:
        client.acquire([calc_requirement()])

    assert_names_the_end(raised.value, RELEASED)


def test_a_watched_grant_of_a_lease_that_ended_raises(misbehaving):
    _, client = misbehaving(granted=RELEASED)
    events = client.watch_acquire([calc_requirement()], max_wait=WAIT)

    with pytest.raises(LeaseNotActiveError) as raised:
        [event for event in events if isinstance(event, Granted)]

    assert_names_the_end(raised.value, RELEASED)


def test_renew_raises_on_a_lease_that_ended(misbehaving):
    _, client = misbehaving(granted=ACTIVE, renewed=EXPIRED)

    with pytest.raises(LeaseNotActiveError) as raised:
        client.renew("L1", "s")

    assert_names_the_end(raised.value, EXPIRED)


@pytest.mark.parametrize("wait", [0, WAIT], ids=["acquire", "watch"])
def test_lease_and_lease_many_raise_on_a_lease_that_ended(misbehaving, wait):
    _, client = misbehaving(granted=RELEASED)

    with pytest.raises(LeaseNotActiveError), client.lease(Calculator, name="calc", wait=wait):
        pytest.fail("the block ran on an ended lease")
    with (
        pytest.raises(LeaseNotActiveError),
        client.lease_many({"calc": request(Calculator, name="calc")}, wait=wait),
    ):
        pytest.fail("the block ran on an ended lease")


class Inert(BaseResource):
    """A calculator whose hooks do nothing: only its lease matters here."""

    DATA_CLASS = CalculatorData


def test_a_renewal_that_returns_an_ended_lease_marks_the_held_lease_lost(misbehaving):
    service, client = misbehaving(granted=ACTIVE, renewed=EXPIRED)
    held = client.lease(Inert, name="calc", wait=0)

    with held:
        wait_until(held.lost.is_set, WAIT, "the held lease to be marked lost")

        assert service.renewals == 1  # and no renewal after it was lost


def test_a_replayed_request_id_whose_lease_ended_raises(client, calc):
    request_id = str(uuid.uuid4())
    lease, secret = client.acquire([calc_requirement()], request_id=request_id)
    client.release(lease.lease_id, secret)

    with pytest.raises(FailedPreconditionError) as raised:
        client.acquire([calc_requirement()], request_id=request_id)

    assert raised.value.violations[0][1] == f"leases/{lease.lease_id}"
    assert client.get_resource("calc").owner == ""
