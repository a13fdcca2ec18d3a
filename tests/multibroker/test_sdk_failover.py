"""An SDK client given several brokers moves to another when the one it uses
dies or freezes (SIGSTOP: its port still accepts connections, but nothing
answers), and keeps its lease by renewing it there in time; a session on a
frozen broker is noticed as lost, and another opens on a broker that
answers."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator

import pytest

from broker.v1 import inventory_service_pb2, lease_pb2, lease_service_pb2
from sdk import BrokerClient, DeadlineExceededError
from sdk.channel import addresses_of
from sdk.keepalive import KeepAlive
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import wait_until
from tests.multibroker.fleet import Broker, Fleet

TRY_TIMEOUT = 1.0  # what the frozen broker may cost each call
WAIT = 15.0  # bound of each wait on a condition


def calculator() -> lease_pb2.Requirement:
    return lease_pb2.Requirement(kind="Calculator", constraints=[])


@contextlib.contextmanager
def frozen(broker: Broker) -> Iterator[None]:
    """SIGSTOPs the broker's process (by pid) for the block; SIGCONT whatever
    the block did."""
    broker.process.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.process.signal(signal.SIGCONT)


def lease_on(broker: Broker, lease_id: str) -> lease_pb2.Lease:
    request = lease_service_pb2.GetLeaseRequest(lease_id=lease_id)
    return broker.leases.GetLease(request, timeout=RPC_TIMEOUT).lease


def owner_on(broker: Broker, name: str) -> str:
    request = inventory_service_pb2.GetResourceRequest(name=name)
    return broker.inventory.GetResource(request, timeout=RPC_TIMEOUT).resource.owner


def test_a_list_of_brokers_is_each_address_in_order():
    assert addresses_of("127.0.0.1:1, 127.0.0.1:2") == ("127.0.0.1:1", "127.0.0.1:2")
    assert addresses_of("broker.lab:50051") == ("broker.lab:50051",)


@pytest.mark.parametrize("address", ["", "127.0.0.1:1,", "127.0.0.1:1,,127.0.0.1:2"])
def test_a_list_with_an_empty_entry_is_refused_naming_it(address):
    with pytest.raises(ValueError, match="empty entry") as refused:
        BrokerClient(address)

    assert repr(address) in str(refused.value)


@dataclasses.dataclass
class Pair:
    """Two brokers on one database, and the address list a client is given:
    the first broker first."""

    fleet: Fleet
    first: Broker
    second: Broker

    @property
    def addresses(self) -> str:
        return f"{self.first.address},{self.second.address}"


@pytest.fixture
def pair(fleet) -> Pair:
    """Two brokers, and the resource `calc`."""
    pair = Pair(fleet, *fleet.start_many(2))
    with BrokerClient(pair.addresses, session=False) as admin:
        admin.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1"})
    return pair


def test_the_client_fails_over_and_keeps_its_lease(pair):
    with BrokerClient(pair.addresses, session=False) as client:
        lease, secret = client.acquire([calculator()], ttl=30)

        pair.fleet.kill(pair.first)

        renewed = client.renew(lease.lease_id, secret)
        assert renewed.state == lease_pb2.LEASE_STATE_ACTIVE
        assert renewed.expire_time.ToNanoseconds() >= lease.expire_time.ToNanoseconds()
        assert client.release(lease.lease_id, secret).state == lease_pb2.LEASE_STATE_RELEASED


def test_renew_and_release_go_through_the_other_broker_when_one_freezes(pair):
    first, second = pair.first, pair.second
    with BrokerClient(pair.addresses, try_timeout=TRY_TIMEOUT, session=False) as client:
        lease, secret = client.acquire([calculator()], ttl=30)
        assert lease_on(second, lease.lease_id).state == lease_pb2.LEASE_STATE_ACTIVE

        with frozen(first):
            renewed = client.renew(lease.lease_id, secret)
            released = client.release(lease.lease_id, secret)

            assert renewed.state == lease_pb2.LEASE_STATE_ACTIVE
            assert renewed.expire_time.ToNanoseconds() >= lease.expire_time.ToNanoseconds()
            assert released.state == lease_pb2.LEASE_STATE_RELEASED
            assert owner_on(second, "calc") == ""


def test_a_session_on_a_frozen_broker_is_lost_and_renewals_go_through_the_other(pair):
    first, second = pair.first, pair.second
    renewals: list[lease_pb2.Lease] = []
    lost = threading.Event()
    with BrokerClient(pair.addresses, try_timeout=TRY_TIMEOUT, session=False) as client:
        session = client.open_session(keepalive_timeout=2.0)
        lease, secret = client.acquire([calculator()], ttl=9, session_id=session.session_id)
        keepalive = KeepAlive(
            client, lease.lease_id, secret, interval=3.0, lost=lost, on_renew=renewals.append
        )
        keepalive.start()
        try:
            with frozen(first):
                wait_until(session.lost.is_set, WAIT, "the session on the frozen broker to be lost")
                assert isinstance(session.error, DeadlineExceededError)
                # The first broker cannot answer: what is renewed from now on
                # was renewed through the second.
                before = len(renewals)
                wait_until(lambda: len(renewals) > before, WAIT, "a renewal through the second")
                assert not lost.is_set()
                assert lease_on(second, lease.lease_id).state == lease_pb2.LEASE_STATE_ACTIVE

                replacement = client.open_session(keepalive_timeout=2.0)
                opened = replacement.expire_time
                wait_until(lambda: replacement.expire_time > opened, WAIT, "a keep-alive answered")
                assert not replacement.lost.is_set()

                keepalive.stop()
                assert client.release(lease.lease_id, secret).state == (
                    lease_pb2.LEASE_STATE_RELEASED
                )
                replacement.close()
        finally:
            keepalive.stop()

    assert lease_on(second, lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert owner_on(second, "calc") == ""
