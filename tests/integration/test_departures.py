"""A waiting call that leaves while the database is slow to take its
departure (a lock timeout behind a crowd of others) still takes its request
out of the queue: the departure is tried again."""

from __future__ import annotations

import logging

import grpc

from broker.api.server import build_server
from broker.models.database import WRITE_LOCK_KEY, schema_lock_key
from broker.v1 import inventory_service_pb2_grpc, lease_service_pb2, lease_service_pb2_grpc
from tests.conftest import RPC_TIMEOUT, make_config, wait_serving
from tests.integration.helpers import (
    acquire,
    acquire_request,
    calculator,
    create_resource,
    requirement,
    wait_until,
)

WAIT = 30.0
LEFT = 10.0


def waiting(lease_stub) -> int:
    listed = lease_stub.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=RPC_TIMEOUT)
    return len(listed.waiters)


def test_a_departure_that_meets_a_lock_timeout_is_tried_again(
    tmp_path, postgres_url, postgres_admin, caplog
):
    caplog.set_level(logging.INFO, logger="broker.api.waits")
    server = build_server(make_config(tmp_path, postgres_url), "127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        wait_serving(server.address)
        leases = lease_service_pb2_grpc.LeaseServiceStub(channel)
        create_resource(inventory_service_pb2_grpc.InventoryServiceStub(channel), calculator("c"))
        acquire(leases, requirement("Calculator"), holder="keeper")
        request = acquire_request(requirement("Calculator"), holder="leaver")
        request.max_wait.FromSeconds(600)
        call = leases.WatchAcquireLease(
            lease_service_pb2.WatchAcquireLeaseRequest(request=request), timeout=600
        )
        assert next(call).HasField("waiting")
        lock = (WRITE_LOCK_KEY, schema_lock_key(postgres_url.rsplit("schema=", 1)[1]))
        with postgres_admin.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", lock)
            try:
                call.cancel()
                wait_until(
                    lambda: "could not leave the queue" in caplog.text,
                    WAIT,
                    "the departure to meet the lock timeout",
                )
                assert waiting(leases) == 1
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", lock)
        # Well within the backoff of the retries, long before any sweep.
        wait_until(lambda: waiting(leases) == 0, LEFT, "the request to leave the queue")
    finally:
        channel.close()
        server.stop(0)
