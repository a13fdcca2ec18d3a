"""The SDK's channel pings the broker explicitly, within what the broker
accepts: a long wait or a quiet session stream is watched, never refused
with GOAWAY for pinging too often."""

from __future__ import annotations

import pytest

from broker.api.server import SERVER_OPTIONS
from broker.v1 import lease_service_pb2, lease_service_pb2_grpc
from sdk import BrokerClient
from sdk.channel import (
    CHANNEL_OPTIONS,
    KEEPALIVE_PERMIT_WITHOUT_CALLS,
    KEEPALIVE_TIME_MS,
    KEEPALIVE_TIMEOUT_MS,
    MAX_PINGS_WITHOUT_DATA,
    open_channel,
)


def test_the_channel_options_are_the_documented_keepalive_settings():
    assert dict(CHANNEL_OPTIONS) == {
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    assert (
        KEEPALIVE_TIME_MS,
        KEEPALIVE_TIMEOUT_MS,
        KEEPALIVE_PERMIT_WITHOUT_CALLS,
        MAX_PINGS_WITHOUT_DATA,
    ) == (10_000, 5_000, 1, 0)


def test_the_client_pings_no_more_often_than_the_broker_accepts():
    server = dict(SERVER_OPTIONS)
    assert server["grpc.http2.min_recv_ping_interval_without_data_ms"] <= KEEPALIVE_TIME_MS
    assert server["grpc.keepalive_permit_without_calls"] == KEEPALIVE_PERMIT_WITHOUT_CALLS


def test_a_channel_with_these_options_reaches_the_broker(broker):
    with open_channel(broker.address) as channel:
        stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
        assert stub.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=10).waiters == []
    with BrokerClient(broker.address) as client:
        assert list(client.list_waiters()) == []


@pytest.mark.parametrize(("name", "value"), [("timeout", 0), ("try_timeout", -1.0)])
def test_a_client_refuses_a_deadline_that_is_not_positive(name, value):
    with pytest.raises(ValueError, match=f"^{name} is a positive number of seconds"):
        BrokerClient("127.0.0.1:1", **{name: value})
