"""A waiting request is woken by a release on another broker (the grant is
announced with NOTIFY), and a stream is sent its new place when a request
ahead of it leaves through another broker (the queue change is announced
with NOTIFY): neither is found later by the board's own safety poll.

A waiter on broker B asks for a calculator held through broker A, with a
`max_wait` shorter than the safety poll (`SAFETY_POLL_SECONDS`), so no
safety poll happens while it waits; once it is in the queue, the holder
releases through A. The grant must reach the waiting caller soon after the
release; only the NOTIFY can have woken it. The roles swap each round. It
holds on idle brokers and on busy ones, whose other clients keep renewing
leases meanwhile (write transactions of their own, concurrent with the
release).
"""

from __future__ import annotations

import contextlib
import threading
import time

import grpc
import pytest

from broker.api.waits import SAFETY_POLL_SECONDS
from broker.v1 import lease_pb2, lease_service_pb2
from tests.integration.helpers import (
    acquire,
    acquire_request,
    calculator,
    create_resource,
    requirement,
    wait_until,
)
from tests.multibroker.fleet import Broker

ROUNDS = 6
BUSY_ROUNDS = 20  # a lost wake-up under load is intermittent: look more often
MAX_WAIT = 10.0
CALL_TIMEOUT = MAX_WAIT + 5.0
# From the release to the grant's answer.
WAKE_LIMIT = 0.5
RENEWERS = 4  # per broker, when busy
CHURN_DEADLINE = 30.0


class Waiting(threading.Thread):
    """An AcquireLease call with max_wait, timed from its start to its answer."""

    def __init__(self, broker: Broker, request: lease_service_pb2.AcquireLeaseRequest):
        super().__init__(daemon=True)
        self.broker = broker
        self.request = request
        self.start_time = self.end_time = 0.0
        self.response: lease_service_pb2.AcquireLeaseResponse | None = None
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        self.start_time = time.monotonic()
        try:
            self.response = self.broker.leases.AcquireLease(self.request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            self.error = error
        self.end_time = time.monotonic()


def queued(broker: Broker) -> int:
    response = broker.leases.ListWaiters(lease_service_pb2.ListWaitersRequest(), timeout=5)
    return len(response.waiters)


@contextlib.contextmanager
def churning(brokers: list[Broker], renewers: int):
    """`renewers` threads per broker renew a lease of their own in a loop
    until the block ends; their errors are collected and checked."""
    stop = threading.Event()
    errors: list[str] = []
    deadline = time.monotonic() + CHURN_DEADLINE

    def renew(broker: Broker, name: str) -> None:
        try:
            lease = acquire(broker.leases, requirement("Calculator", name=name), holder=name)
            request = lease_service_pb2.RenewLeaseRequest(
                lease_id=lease.lease.lease_id, secret=lease.secret
            )
            while not stop.is_set() and time.monotonic() < deadline:
                broker.leases.RenewLease(request, timeout=5)
        except grpc.RpcError as error:
            errors.append(f"{name}: {error.code()} {error.details()}")

    threads = []
    for b, broker in enumerate(brokers):
        for n in range(renewers):
            name = f"busy-{b}-{n}"
            create_resource(broker.inventory, calculator(name))
            threads.append(threading.Thread(target=renew, args=(broker, name), daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


@pytest.mark.parametrize(
    ("renewers", "rounds"), [(0, ROUNDS), (RENEWERS, BUSY_ROUNDS)], ids=["idle", "busy"]
)
def test_a_release_on_one_broker_wakes_a_waiter_on_another(fleet, renewers, rounds):
    assert MAX_WAIT < SAFETY_POLL_SECONDS, "a safety poll could answer the waits"
    brokers = fleet.start_many(2)
    create_resource(brokers[0].inventory, calculator("calc-1"))
    wanted = requirement("Calculator", name="calc-1")
    held = acquire(brokers[0].leases, wanted, holder="holder")
    with churning(brokers, renewers):
        latencies = wake_rounds(brokers, wanted, held, rounds)
    print(f"release -> grant across brokers: max {max(latencies) * 1000:.1f} ms")


def wake_rounds(brokers: list[Broker], wanted, held, rounds: int) -> list[float]:
    """Each round: a waiter on one broker, the release through the other;
    returns the release -> grant latencies."""
    latencies = []
    for round_ in range(rounds):
        releasing, waiting_on = brokers[round_ % 2], brokers[(round_ + 1) % 2]
        request = acquire_request(wanted, holder=f"waiter-{round_}")
        request.max_wait.FromSeconds(int(MAX_WAIT))
        waiter = Waiting(waiting_on, request)
        waiter.start()
        wait_until(lambda releasing=releasing: queued(releasing) == 1, 5.0, "the waiter to queue")

        released_at = time.monotonic()
        releasing.leases.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(lease_id=held.lease.lease_id, secret=held.secret),
            timeout=5,
        )
        waiter.join(CALL_TIMEOUT + 1)

        assert not waiter.is_alive(), "the waiting call never answered"
        assert waiter.error is None, (waiter.error.code(), waiter.error.details())
        assert waiter.response.lease.state == lease_pb2.LEASE_STATE_ACTIVE
        latency = waiter.end_time - released_at
        waited = waiter.end_time - waiter.start_time
        latencies.append(latency)
        assert latency < WAKE_LIMIT, (
            f"round {round_}: granted {latency:.3f} s after the release on another broker"
        )
        assert waited < MAX_WAIT, f"round {round_}: the call waited {waited:.3f} s"
        held = waiter.response  # the next round's holder, released through the other broker

    assert queued(brokers[0]) == 0
    return latencies


def test_a_stream_moves_up_when_a_request_ahead_leaves_through_another_broker(fleet):
    assert MAX_WAIT < SAFETY_POLL_SECONDS, "a safety poll could move the stream"
    brokers = fleet.start_many(2)
    create_resource(brokers[0].inventory, calculator("calc-1"))
    wanted = requirement("Calculator", name="calc-1")
    held = acquire(brokers[0].leases, wanted, holder="holder")
    ahead = brokers[0].leases.WatchAcquireLease(
        lease_service_pb2.WatchAcquireLeaseRequest(request=waiting_request(wanted, "ahead")),
        timeout=CALL_TIMEOUT,
    )
    assert next(ahead).waiting.position == 0
    behind = brokers[1].leases.WatchAcquireLease(
        lease_service_pb2.WatchAcquireLeaseRequest(request=waiting_request(wanted, "behind")),
        timeout=CALL_TIMEOUT,
    )
    assert next(behind).waiting.position == 1

    ahead.cancel()
    moved = next(behind)

    assert moved.WhichOneof("event") == "waiting"
    assert moved.waiting.position == 0
    brokers[0].leases.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(lease_id=held.lease.lease_id, secret=held.secret),
        timeout=5,
    )
    [granted] = list(behind)
    assert granted.granted.lease.holder == "behind"


def waiting_request(wanted, holder: str) -> lease_service_pb2.AcquireLeaseRequest:
    request = acquire_request(wanted, holder=holder)
    request.max_wait.FromSeconds(int(MAX_WAIT))
    return request
