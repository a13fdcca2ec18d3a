"""Fixtures of the SDK suite: a real calculator device beside the broker."""

from __future__ import annotations

import pytest

from resources.calculator.device import start_in_thread
from sdk import BrokerClient


@pytest.fixture
def device_port():
    """A calculator device on 127.0.0.1 and a free port."""
    server, port = start_in_thread()
    yield port
    server.close()


@pytest.fixture
def client(broker):
    with BrokerClient(broker.address, holder="tester@bench") as client:
        yield client


@pytest.fixture
def calc(client, device_port):
    """A calculator resource `calc` pointing at the device."""
    return client.create_resource(
        "Calculator", "calc", {"ip_address": "127.0.0.1", "port": device_port}
    )
