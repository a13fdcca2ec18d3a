"""Sessions through the SDK against a real broker: leases bound to the
client's session, released when the client closes, expired at once when the
session's stream breaks, and kept alive past the session's timeout."""

from __future__ import annotations

import datetime
import threading

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import BrokerClient, InvalidArgumentError
from tests.sdk.helpers import WAIT, calc_requirement, lease_state, wait_until

# "Within seconds of the stream breaking" (design, semantic 4): far less than
# the session's keep-alive timeout and the lease's TTL in these tests.
PROMPTLY = 5.0


@pytest.fixture
def session_client(broker):
    """A client with sessions on (the default), under its own holder."""
    with BrokerClient(broker.address, holder="session@bench") as session_client:
        yield session_client


def test_leases_of_a_session_client_carry_its_session_id(session_client, client, calc):
    held = session_client.lease(Calculator, name="calc")

    with held as calculator:
        assert calculator.calculate("6 * 7") == 42
        session = session_client.lease_session()
        assert session is not None
        assert session.session_id
        assert client.get_lease(held.lease_id).session_id == session.session_id

    assert lease_state(client, held.lease_id) == lease_pb2.LEASE_STATE_RELEASED
    assert not session.lost.is_set()


def test_a_client_without_sessions_binds_nothing(broker, client, calc):
    with BrokerClient(broker.address, session=False) as plain:
        held = plain.lease(Calculator, name="calc")
        with held:
            assert client.get_lease(held.lease_id).session_id == ""
        assert plain.lease_session() is None


def test_closing_the_client_releases_its_session_leases(broker, client, calc):
    closing = BrokerClient(broker.address, holder="session@bench")
    session = closing.lease_session()
    lease, _ = closing.acquire([calc_requirement()], session_id=session.session_id)
    assert client.get_resource("calc").owner == "session@bench"

    closing.close()

    ended = client.get_lease(lease.lease_id)
    assert ended.state == lease_pb2.LEASE_STATE_RELEASED
    assert "closed by its client" in ended.end_reason
    assert client.get_resource("calc").owner == ""
    assert not session.lost.is_set()
    closing.close()  # idempotent


def test_a_broken_session_stream_expires_its_leases_at_once(client, calc):
    session = client.open_session(keepalive_timeout=30)
    lease, _ = client.acquire([calc_requirement()], ttl=60, session_id=session.session_id)

    session._cancel()  # the stream breaks as if this process had died

    assert session.lost.wait(WAIT)
    wait_until(
        lambda: lease_state(client, lease.lease_id) == lease_pb2.LEASE_STATE_EXPIRED,
        threading.Event().wait,
        timeout=PROMPTLY,
    )
    assert "stream broke" in client.get_lease(lease.lease_id).end_reason
    assert client.get_resource("calc").owner == ""
    session.close()  # after a loss, closing does nothing more


def test_keep_alives_keep_the_session_and_its_leases_past_the_timeout(client, calc):
    session = client.open_session(keepalive_timeout=1.0)
    assert session.keepalive_timeout == 1.0
    first_expiry = session.expire_time
    # A 1 s TTL and no lease keepalive: only the session's keep-alives renew it.
    lease, _ = client.acquire([calc_requirement()], ttl=1.0, session_id=session.session_id)

    wait_until(
        lambda: datetime.datetime.now(datetime.UTC) > first_expiry + datetime.timedelta(seconds=1),
        session.lost.wait,
    )

    assert not session.lost.is_set()
    assert session.expire_time > first_expiry
    assert lease_state(client, lease.lease_id) == lease_pb2.LEASE_STATE_ACTIVE
    session.close()
    assert lease_state(client, lease.lease_id) == lease_pb2.LEASE_STATE_RELEASED


def test_a_session_the_broker_refuses_raises_on_open(client):
    with pytest.raises(InvalidArgumentError) as refused:
        client.open_session(keepalive_timeout=0.5)

    assert [field for field, _ in refused.value.field_violations] == ["keepalive_timeout"]


def test_a_lost_session_is_replaced_for_the_next_lease(session_client, client, calc):
    first = session_client.lease_session()
    first._cancel()
    assert first.lost.wait(WAIT)
    held = session_client.lease(Calculator, name="calc")

    with held:
        second = session_client.lease_session()
        assert second is not first
        assert not second.lost.is_set()
        assert client.get_lease(held.lease_id).session_id == second.session_id
