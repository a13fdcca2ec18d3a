"""A client given several brokers leaves one that stops answering: a frozen
or hung broker costs one try of `try_timeout`, then the call and the
client's later calls go to the next broker; the number of tries is bounded
even when no broker answers; a session whose broker freezes is noticed as
lost, and a held lease is renewed through the next broker.

The unresponsive brokers are the fault injectors of `tests.sdk.faults`,
placed first in the client's list; the second broker is the real one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import BrokerClient, DeadlineExceededError
from sdk.retry import ATTEMPTS
from tests.integration.helpers import wait_until
from tests.sdk.faults import FreezableProxy, StalledBroker
from tests.sdk.helpers import WAIT, calc_requirement, lease_state

TRY_TIMEOUT = 1.0  # a frozen broker's cost per call, far under the calls' budget


@pytest.fixture
def stalled():
    stalled = StalledBroker()
    yield stalled
    stalled.close()


@pytest.fixture
def other_stalled():
    stalled = StalledBroker()
    yield stalled
    stalled.close()


@pytest.fixture
def silent():
    """A port that accepts connections and never answers."""
    silent = FreezableProxy()
    yield silent
    silent.close()


@pytest.fixture
def proxy(broker):
    """A proxy to the real broker, to freeze during a test."""
    host, port = broker.address.rsplit(":", 1)
    proxy = FreezableProxy((host, int(port)))
    yield proxy
    proxy.close()


@pytest.fixture
def held(client, calc) -> tuple[lease_pb2.Lease, str]:
    """A lease on `calc`, taken straight from the real broker."""
    return client.acquire([calc_requirement()], ttl=60)


def failover_client(first: str, broker, **options) -> BrokerClient:
    options.setdefault("session", False)
    return BrokerClient(
        f"{first},{broker.address}", try_timeout=TRY_TIMEOUT, holder="tester@bench", **options
    )


# Each call safe to repeat, checked for its outcome; returns the RPC's name.


def renew(client: BrokerClient, lease: lease_pb2.Lease, secret: str) -> str:
    renewed = client.renew(lease.lease_id, secret)
    assert renewed.state == lease_pb2.LEASE_STATE_ACTIVE
    assert renewed.expire_time.ToNanoseconds() >= lease.expire_time.ToNanoseconds()
    return "RenewLease"


def release(client: BrokerClient, lease: lease_pb2.Lease, secret: str) -> str:
    assert client.release(lease.lease_id, secret).state == lease_pb2.LEASE_STATE_RELEASED
    assert client.get_resource("calc").owner == ""
    return "ReleaseLease"


def get(client: BrokerClient, lease: lease_pb2.Lease, secret: str) -> str:
    assert client.get_lease(lease.lease_id).grants[0].resource.name == "calc"
    return "GetLease"


def listing(client: BrokerClient, lease: lease_pb2.Lease, secret: str) -> str:
    assert [found.lease_id for found in client.list_leases(holder="tester@bench")] == [
        lease.lease_id
    ]
    return "ListLeases"


SAFE_CALLS = [renew, release, get, listing]
Call = Callable[[BrokerClient, lease_pb2.Lease, str], str]


@pytest.mark.parametrize("call", SAFE_CALLS, ids=lambda call: call.__name__)
def test_a_stalled_first_broker_costs_one_try(stalled, broker, held, call: Call):
    lease, secret = held
    with failover_client(stalled.address, broker) as client:
        method = call(client, lease, secret)

        assert stalled.calls == {method: 1}
        assert client.get_lease(lease.lease_id).lease_id == lease.lease_id
        assert stalled.total == 1  # the later call went straight to the second broker


@pytest.mark.parametrize("call", SAFE_CALLS, ids=lambda call: call.__name__)
def test_a_port_that_never_answers_is_left_for_the_next_broker(silent, broker, held, call: Call):
    lease, secret = held
    with failover_client(silent.address, broker) as client:
        call(client, lease, secret)
        client.get_lease(lease.lease_id)

    assert silent.accepted == 1


def test_acquire_and_create_go_to_the_next_broker_when_the_first_does_not_connect(
    silent, broker, client, device_port
):
    with failover_client(silent.address, broker) as failover:
        failover.create_resource(
            "Calculator", "calc", {"ip_address": "127.0.0.1", "port": device_port}
        )
        lease, _ = failover.acquire([calc_requirement()])

    assert [resource.name for resource in client.list_resources()] == ["calc"]
    assert lease_state(client, lease.lease_id) == lease_pb2.LEASE_STATE_ACTIVE


def test_an_acquire_is_never_sent_to_a_broker_that_does_not_answer_its_health(
    stalled, broker, client, calc
):
    with failover_client(stalled.address, broker) as failover:
        lease, _ = failover.acquire([calc_requirement()])
        failover.revoke_lease(lease.lease_id, "the test is done with it")

    assert stalled.calls == {"Check": 1}
    assert lease_state(client, lease.lease_id) == lease_pb2.LEASE_STATE_REVOKED


@pytest.mark.parametrize("watch", [False, True], ids=["acquire", "watch_acquire"])
def test_a_wait_that_ends_is_the_brokers_answer_not_its_silence(
    stalled, broker, client, calc, watch
):
    held, _ = client.acquire([calc_requirement()])
    with BrokerClient(
        f"{broker.address},{stalled.address}", try_timeout=TRY_TIMEOUT, session=False
    ) as waiting:
        # A wait longer than a try: an acquire is never cut short.
        wait = 2 * TRY_TIMEOUT
        with pytest.raises(DeadlineExceededError):
            if watch:
                list(waiting.watch_acquire([calc_requirement()], max_wait=wait))
            else:
                waiting.acquire([calc_requirement()], max_wait=wait)

        assert waiting.get_lease(held.lease_id).lease_id == held.lease_id

    assert stalled.total == 0


def test_tries_are_bounded_when_no_broker_answers(stalled, other_stalled):
    addresses = f"{stalled.address},{other_stalled.address}"
    client = BrokerClient(addresses, try_timeout=TRY_TIMEOUT, session=False)
    with client, pytest.raises(DeadlineExceededError):
        client.get_lease("L1")

    assert (stalled.calls["GetLease"], other_stalled.calls["GetLease"]) == (2, 1)
    assert stalled.total + other_stalled.total == ATTEMPTS


def test_one_broker_gets_one_try_with_the_whole_budget(stalled):
    client = BrokerClient(stalled.address, timeout=1.5, try_timeout=0.5, session=False)
    with client, pytest.raises(DeadlineExceededError):
        client.get_lease("L1")

    assert stalled.calls == {"GetLease": 1}


def test_a_session_opens_on_the_next_broker_when_the_first_stalls(stalled, broker):
    with failover_client(stalled.address, broker) as client:
        session = client.open_session(keepalive_timeout=5)

        assert session.session_id
        assert stalled.calls == {"OpenSession": 1}
        session.close()
        assert not session.lost.is_set()


def test_a_session_whose_broker_freezes_is_lost_and_another_opens(proxy, broker):
    with failover_client(proxy.address, broker) as client:
        session = client.open_session(keepalive_timeout=1.0)
        first_expiry = session.expire_time
        wait_until(lambda: session.expire_time > first_expiry, WAIT, "a keep-alive answered")

        proxy.freeze()

        # No answer for a keep-alive timeout: lost within that and one interval.
        assert session.lost.wait(WAIT)
        assert isinstance(session.error, DeadlineExceededError)
        replacement = client.open_session(keepalive_timeout=1.0)
        opened = replacement.expire_time
        wait_until(lambda: replacement.expire_time > opened, WAIT, "the new session's keep-alive")
        assert not replacement.lost.is_set()
        replacement.close()


def test_a_held_lease_is_renewed_through_the_next_broker_when_its_broker_freezes(
    proxy, broker, client, calc
):
    with failover_client(proxy.address, broker) as failover:
        held = failover.lease(Calculator, name="calc", ttl=6, wait=0)
        with held as calculator:
            proxy.freeze()
            granted = held.expire_time

            wait_until(lambda: held.expire_time > granted, WAIT, "a renewal past the freeze")

            assert not held.lost.is_set()
            assert lease_state(client, held.lease_id) == lease_pb2.LEASE_STATE_ACTIVE
            assert calculator.calculate("6 * 7") == 42

    assert lease_state(client, held.lease_id) == lease_pb2.LEASE_STATE_RELEASED
