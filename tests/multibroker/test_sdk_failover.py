"""An SDK client given several brokers moves to another when the one it uses
dies, and keeps its lease by renewing it there in time."""

from __future__ import annotations

from broker.v1 import lease_pb2
from sdk import BrokerClient
from sdk.channel import target_of


def test_a_list_of_brokers_is_one_ipv4_target():
    assert target_of("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert target_of("127.0.0.1:1") == "127.0.0.1:1"


def test_the_client_fails_over_and_keeps_its_lease(make_fleet):
    fleet = make_fleet()
    first, second = fleet.start_many(2)
    with BrokerClient(f"{first.address},{second.address}", session=False) as admin:
        admin.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1"})
    with BrokerClient(f"{first.address},{second.address}", session=False) as client:
        lease, secret = client.acquire(
            [lease_pb2.Requirement(kind="Calculator", constraints=[])], ttl=30
        )

        fleet.kill(first)

        renewed = client.renew(lease.lease_id, secret)
        assert renewed.state == lease_pb2.LEASE_STATE_ACTIVE
        assert renewed.expire_time.ToNanoseconds() >= lease.expire_time.ToNanoseconds()
        assert client.release(lease.lease_id, secret).state == lease_pb2.LEASE_STATE_RELEASED
