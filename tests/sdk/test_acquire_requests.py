"""`BrokerClient.acquire` takes `request(...)` objects as well as
requirement messages, and says what it cannot take."""

from __future__ import annotations

import pytest

from broker.v1 import lease_pb2
from resources.calculator.resource import Calculator
from sdk import request
from tests.sdk.helpers import calc_requirement


def test_acquire_takes_request_objects_beside_requirement_messages(client, device_port):
    for name in ("calc-a", "calc-b", "calc-c"):
        client.create_resource("Calculator", name, {"ip_address": "127.0.0.1", "port": device_port})

    lease, secret = client.acquire(
        [
            request(Calculator, name="calc-a"),
            request(Calculator, count=1, name=["calc-b"]),
            calc_requirement("calc-c"),
        ]
    )

    assert lease.state == lease_pb2.LeaseState.LEASE_STATE_ACTIVE
    assert [(grant.requirement_index, grant.resource.name) for grant in lease.grants] == [
        (0, "calc-a"),
        (1, "calc-b"),
        (2, "calc-c"),
    ]
    assert [grant.label for grant in lease.grants] == ["", "", "calc"]
    client.release(lease.lease_id, secret)


def test_acquire_names_a_requirement_it_cannot_take(client):
    with pytest.raises(TypeError, match="not dict"):
        client.acquire([{"kind": "Calculator"}])
