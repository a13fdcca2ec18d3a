"""What wakes a waiting call, with the board's safety poll pushed out of
reach (`SAFETY_POLL_SECONDS` an hour): a grant reaches its call by the
grant's own wake-up, a stream is sent its new place as those ahead of it
leave or are granted, and a deadline ends its wait on its own timer. Had
any of them relied on polling, these calls would wait for an hour."""

from __future__ import annotations

import time

import grpc
import pytest

from broker.api import waits
from broker.v1 import lease_pb2, lease_service_pb2
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import acquire, requirement, wait_until
from tests.integration.test_queue_api import (
    QUEUED_TIMEOUT,
    Waiter,
    calc_request,
    finish,
    next_waiting,
    release,
    waiting_holders,
    watch,
)

NEVER = 3600.0
CALL_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def no_safety_poll(monkeypatch):
    monkeypatch.setattr(waits, "SAFETY_POLL_SECONDS", NEVER)


def test_a_waiting_call_is_woken_by_its_grant(broker, lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    waiter = Waiter(broker.address, calc_request("waiter", max_wait=NEVER))
    waiter.release_at_once = False
    waiter.start()
    wait_until(lambda: waiting_holders(lease_stub) == ["waiter"], QUEUED_TIMEOUT, "queued")

    release(lease_stub, first)
    finish([waiter], timeout=CALL_TIMEOUT)

    assert waiter.error is None, waiter.error
    assert waiter.granted.lease.holder == "waiter"
    assert waiter.granted.lease.state == lease_pb2.LEASE_STATE_ACTIVE
    assert broker.board.waiting_calls() == 0


def test_a_stream_is_sent_its_place_as_those_ahead_leave_or_are_granted(lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    leaving = watch(lease_stub, calc_request("leaving", max_wait=NEVER))
    assert next_waiting(leaving).position == 0
    granted = watch(lease_stub, calc_request("granted", max_wait=NEVER))
    assert next_waiting(granted).position == 1
    last = watch(lease_stub, calc_request("last", max_wait=NEVER))
    assert next_waiting(last).position == 2

    leaving.cancel()
    assert next_waiting(granted).position == 0
    moved = next_waiting(last)
    assert moved.position == 1
    assert [holder.holder for holder in moved.blocked.holders] == ["first"]

    release(lease_stub, first)
    ahead = next(granted)
    assert ahead.WhichOneof("event") == "granted"
    moved = next_waiting(last)
    assert moved.position == 0
    assert [holder.holder for holder in moved.blocked.holders] == ["granted"]

    release(lease_stub, ahead.granted)
    [message] = list(last)
    assert message.WhichOneof("event") == "granted"
    assert message.granted.lease.holder == "last"


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
def test_a_wait_ends_at_its_deadline(broker, lease_stub, calculators, streamed):
    acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    request = calc_request("impatient", max_wait=1.0)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as ended:
        if streamed:
            list(
                lease_stub.WatchAcquireLease(
                    lease_service_pb2.WatchAcquireLeaseRequest(request=request),
                    timeout=CALL_TIMEOUT,
                )
            )
        else:
            lease_stub.AcquireLease(request, timeout=CALL_TIMEOUT)
    waited = time.monotonic() - started

    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.0 <= waited < RPC_TIMEOUT
    assert waiting_holders(lease_stub) == []
