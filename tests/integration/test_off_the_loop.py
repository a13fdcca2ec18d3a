"""No domain call runs on the broker's event loop, on either backend: while
a write is held up (a slow disk, a lock wait), health checks and reads are
still answered, and the write itself finds no running loop in its thread."""

from __future__ import annotations

import asyncio
import threading

from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.models.transactions import writes
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import get_resource


def test_a_held_write_stalls_no_health_check_or_read(broker, channel, inventory_stub, calculators):
    entered, go = threading.Event(), threading.Event()
    on_a_loop: list[bool] = []

    @writes
    def slow_write() -> str:
        try:
            asyncio.get_running_loop()
            on_a_loop.append(True)
        except RuntimeError:
            on_a_loop.append(False)
        entered.set()
        assert go.wait(RPC_TIMEOUT)
        return "written"

    held = broker.submit(slow_write)
    try:
        assert entered.wait(RPC_TIMEOUT)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT
        )
        resource = get_resource(inventory_stub, "calc-1")
        assert not held.done()
    finally:
        go.set()
    assert held.result(RPC_TIMEOUT) == "written"
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert resource.name == "calc-1"
    assert on_a_loop == [False]
