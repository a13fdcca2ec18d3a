"""Acquire's `request_id` through the SDK: a repeated request returns the
same lease, sequentially or concurrently, and a try that fails with
UNAVAILABLE is retried with the same id, so a lost reply never makes a
second lease.

UNAVAILABLE is produced by `FlakyLeaseService`, a tiny test-only gRPC server
between the SDK and the real broker: it forwards every call to the broker
but fails chosen tries as a flaky network would. What is under test is the
SDK's retry; every grant is the real broker's.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc
from sdk import BrokerClient, Granted, UnavailableError, Waiting
from tests.sdk.helpers import WAIT, calc_requirement, wait_until

# How the flaky server fails a try: before forwarding it ("refused": the
# broker never saw it), after forwarding it ("reply lost": the broker acted on
# it), or, for a wait, after its first status ("dropped mid-wait").
REFUSED, REPLY_LOST, DROPPED_MID_WAIT = "refused", "reply lost", "dropped mid-wait"


class FlakyLeaseService(lease_service_pb2_grpc.LeaseServiceServicer):
    """Forwards AcquireLease and WatchAcquireLease to the broker, failing the
    first `failures` tries with UNAVAILABLE as `mode` says; records the
    request id of every try."""

    def __init__(self, broker: lease_service_pb2_grpc.LeaseServiceStub, failures: int, mode: str):
        self.broker = broker
        self.mode = mode
        self.request_ids: list[str] = []
        self._failures = failures
        self._lock = threading.Lock()

    def _fails(self, request_id: str) -> bool:
        with self._lock:
            self.request_ids.append(request_id)
            failing = self._failures > 0
            self._failures -= failing
            return failing

    def AcquireLease(self, request, context):
        failing = self._fails(request.request_id)
        if failing and self.mode == REFUSED:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection refused")
        response = self._forward(self.broker.AcquireLease, request, context)
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset before the reply")
        return response

    def WatchAcquireLease(self, request, context):
        failing = self._fails(request.request.request_id)
        if failing and self.mode == REFUSED:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection refused")
        responses = self.broker.WatchAcquireLease(request, timeout=WAIT)
        try:
            for response in responses:
                yield response
                if failing and self.mode == DROPPED_MID_WAIT:
                    break
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())
        if failing:
            responses.cancel()
            wait_until(lambda: not self._waiting(), threading.Event().wait)
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset while waiting")

    def _waiting(self) -> bool:
        listing = lease_service_pb2.ListWaitersRequest()
        return bool(self.broker.ListWaiters(listing, timeout=WAIT).waiters)

    @staticmethod
    def _forward(method, request, context):
        try:
            return method(request, timeout=WAIT)
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())


@pytest.fixture
def flaky(broker):
    """Starts a `FlakyLeaseService` before the broker; returns a client of it."""
    started = []

    def start(failures: int, mode: str) -> tuple[FlakyLeaseService, BrokerClient]:
        upstream = grpc.insecure_channel(broker.address)
        service = FlakyLeaseService(
            lease_service_pb2_grpc.LeaseServiceStub(upstream), failures, mode
        )
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        lease_service_pb2_grpc.add_LeaseServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        client = BrokerClient(f"127.0.0.1:{port}", holder="flaky@bench", session=False)
        started.append((server, upstream, client))
        return service, client

    yield start
    for server, upstream, client in started:
        client.close()
        server.stop(0)
        upstream.close()


def active_lease_ids(client: BrokerClient) -> list[str]:
    return [lease.lease_id for lease in client.list_leases(lease_pb2.LEASE_STATE_ACTIVE)]


# ------------------------------------------------------------- request_id


def test_a_repeated_request_id_returns_the_same_lease(client, calc):
    request_id = str(uuid.uuid4())

    first, first_secret = client.acquire([calc_requirement()], request_id=request_id)
    again, again_secret = client.acquire([calc_requirement()], request_id=request_id)

    assert (again.lease_id, again_secret) == (first.lease_id, first_secret)
    assert active_lease_ids(client) == [first.lease_id]


def test_each_acquire_gets_a_fresh_request_id(client, calc):
    # The same request twice: a reused request id would answer the second
    # with the first lease (or, once released, refuse it).
    first, first_secret = client.acquire([calc_requirement()])
    client.release(first.lease_id, first_secret)
    second, _ = client.acquire([calc_requirement()])

    assert second.lease_id != first.lease_id
    assert second.state == lease_pb2.LEASE_STATE_ACTIVE


def test_a_request_id_sent_twice_at_once_makes_one_lease(broker, client, calc):
    request_id = str(uuid.uuid4())
    start = threading.Barrier(2)

    def acquire() -> tuple[str, str]:
        with BrokerClient(broker.address, holder="racer@bench") as racer:
            start.wait(WAIT)
            lease, secret = racer.acquire([calc_requirement()], request_id=request_id)
            return lease.lease_id, secret

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = [future.result(WAIT) for future in [pool.submit(acquire) for _ in range(2)]]

    assert outcomes[0] == outcomes[1]
    assert active_lease_ids(client) == [outcomes[0][0]]


# ------------------------------------------------------------------ retry


@pytest.mark.parametrize("mode", [REFUSED, REPLY_LOST])
def test_an_unavailable_acquire_is_retried_with_the_same_request_id(flaky, client, calc, mode):
    service, flaky_client = flaky(failures=1, mode=mode)

    lease, secret = flaky_client.acquire([calc_requirement()])

    assert len(service.request_ids) == 2
    assert service.request_ids[0] == service.request_ids[1] != ""
    assert active_lease_ids(client) == [lease.lease_id]
    assert client.renew(lease.lease_id, secret).lease_id == lease.lease_id


def test_retries_are_bounded(flaky, client, calc):
    service, flaky_client = flaky(failures=5, mode=REFUSED)

    with pytest.raises(UnavailableError):
        flaky_client.acquire([calc_requirement()])

    assert len(service.request_ids) == 3
    assert len(set(service.request_ids)) == 1
    assert active_lease_ids(client) == []


def test_an_unavailable_watch_is_retried_with_the_same_request_id(flaky, client, calc):
    service, flaky_client = flaky(failures=1, mode=REFUSED)
    held, secret = client.acquire([calc_requirement()])
    events = flaky_client.watch_acquire([calc_requirement()], max_wait=WAIT)

    assert isinstance(next(events), Waiting)
    client.release(held.lease_id, secret)
    granted = [event for event in events if isinstance(event, Granted)]

    assert len(granted) == 1
    assert len(service.request_ids) == 2
    assert service.request_ids[0] == service.request_ids[1] != ""
    assert active_lease_ids(client) == [granted[0].lease.lease_id]


def test_a_wait_dropped_mid_way_goes_on_waiting_when_retried(flaky, client, calc):
    service, flaky_client = flaky(failures=1, mode=DROPPED_MID_WAIT)
    held, secret = client.acquire([calc_requirement()])
    events = flaky_client.watch_acquire([calc_requirement()], max_wait=WAIT)
    assert isinstance(next(events), Waiting)

    second = next(events)  # the retry, after the first stream was dropped

    assert isinstance(second, Waiting)
    client.release(held.lease_id, secret)
    granted = [event for event in events if isinstance(event, Granted)]
    assert len(granted) == 1
    assert len(service.request_ids) == 2
    assert service.request_ids[0] == service.request_ids[1] != ""
