"""A release whose reply was lost is retried, and the retry that finds the
lease released by that first try returns the released lease; a lease that
was revoked or expired still raises, and so does a first try that finds the
lease already released.

The lost reply is made by `LosesFirstReply`, a server interceptor on a
`ForwardingServer` in front of the real broker: the first ReleaseLease
reaches the broker, which releases the lease, and its reply is replaced by
UNAVAILABLE.
"""

from __future__ import annotations

import pytest

from broker.v1 import lease_pb2
from sdk import BrokerClient, FailedPreconditionError
from sdk.errors import reason_of
from tests.integration.helpers import wait_until
from tests.sdk.faults import ForwardingServer, LosesFirstReply
from tests.sdk.helpers import WAIT, calc_requirement, lease_state


@pytest.fixture
def lossy(broker):
    """A client whose first ReleaseLease reply is lost; and the interceptor
    counting the ReleaseLease calls that reached the broker."""
    interceptor = LosesFirstReply("ReleaseLease")
    server = ForwardingServer(broker.address, interceptor)
    with BrokerClient(server.address, holder="tester@bench", session=False) as lossy_client:
        yield lossy_client, interceptor
    server.close()


def test_a_release_whose_reply_was_lost_returns_the_released_lease(lossy, client, calc):
    lossy_client, interceptor = lossy
    lease, secret = client.acquire([calc_requirement()])

    released = lossy_client.release(lease.lease_id, secret)

    assert interceptor.calls == 2
    assert released.lease_id == lease.lease_id
    assert released.state == lease_pb2.LEASE_STATE_RELEASED
    assert released.end_reason == "released by its holder"
    assert client.get_resource("calc").owner == ""


def revoke(client: BrokerClient, lease: lease_pb2.Lease) -> None:
    client.revoke_lease(lease.lease_id, "the bench is under maintenance")


def expire(client: BrokerClient, lease: lease_pb2.Lease) -> None:
    wait_until(
        lambda: lease_state(client, lease.lease_id) == lease_pb2.LEASE_STATE_EXPIRED,
        WAIT,
        "the lease's TTL to run out",
    )


@pytest.mark.parametrize(
    ("end", "ttl", "reason"),
    [(revoke, 60, "LEASE_REVOKED"), (expire, 1, "LEASE_EXPIRED")],
    ids=["revoked", "expired"],
)
def test_a_retried_release_of_a_lease_that_ended_otherwise_raises(
    lossy, client, calc, end, ttl, reason
):
    lossy_client, interceptor = lossy
    lease, secret = client.acquire([calc_requirement()], ttl=ttl)
    end(client, lease)

    with pytest.raises(FailedPreconditionError) as raised:
        lossy_client.release(lease.lease_id, secret)

    assert interceptor.calls == 2
    assert reason_of(raised.value) == reason


def test_a_first_try_that_finds_the_lease_released_raises(client, calc):
    lease, secret = client.acquire([calc_requirement()])
    client.release(lease.lease_id, secret)

    with pytest.raises(FailedPreconditionError) as raised:
        client.release(lease.lease_id, secret)

    assert reason_of(raised.value) == "LEASE_RELEASED"
