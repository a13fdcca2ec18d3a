"""The wait queue through the real server and the generated stubs: waiters on
their own channels are granted in arrival order (read from the broker's
event table), `WatchAcquireLease` streams the queue position and the
holders, `ListWaiters` pages in serving order, waits end at their deadline
holding nothing, and one request id never makes two grants."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest

from broker.api.convert import duration
from broker.models.event import Event
from broker.v1 import lease_pb2, lease_service_pb2, lease_service_pb2_grpc
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import (
    acquire,
    all_leases,
    get_lease,
    pages,
    requirement,
    wait_until,
)

WAITERS = 16
CALL_TIMEOUT = 30.0
QUEUED_TIMEOUT = 10.0
# A request whose caller is gone leaves the queue at once, in the background.
LEAVE_TIMEOUT = 5.0


def calc_request(
    holder: str,
    *,
    name: str = "calc-1",
    max_wait: float = 60.0,
    priority: int = 0,
    request_id: str = "",
    session_id: str = "",
) -> lease_service_pb2.AcquireLeaseRequest:
    """A request for one calculator by name that waits `max_wait`."""
    return lease_service_pb2.AcquireLeaseRequest(
        requirements=[requirement("Calculator", name=name)],
        holder=holder,
        max_wait=duration(max_wait),
        priority=priority,
        request_id=request_id,
        session_id=session_id,
    )


def all_waiters(lease_stub, page_size: int = 0) -> list[lease_pb2.Waiter]:
    """Every waiting request, in serving order."""
    request = lease_service_pb2.ListWaitersRequest(page_size=page_size)
    return [w for page in pages(lease_stub.ListWaiters, request, "waiters") for w in page]


def waiting_holders(lease_stub) -> list[str]:
    return [waiter.holder for waiter in all_waiters(lease_stub)]


def release(lease_stub, granted: lease_service_pb2.AcquireLeaseResponse) -> lease_pb2.Lease:
    request = lease_service_pb2.ReleaseLeaseRequest(
        lease_id=granted.lease.lease_id, secret=granted.secret
    )
    return lease_stub.ReleaseLease(request, timeout=RPC_TIMEOUT).lease


def grant_order(broker, resource: str) -> list[str]:
    """Lease ids in the order the broker granted `resource`, from its events."""
    with broker.database.connection_context():
        events = (
            Event.select()
            .where((Event.type == "lease_granted") & (Event.resource == resource))
            .order_by(Event.id)
        )
        return [event.lease_id for event in events]


def seconds(timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


class Waiter(threading.Thread):
    """A client on its own channel: acquires (waiting), then releases at once."""

    def __init__(self, address: str, request: lease_service_pb2.AcquireLeaseRequest, **kwargs):
        super().__init__(daemon=True)
        self.address = address
        self.request = request
        self.kwargs = {"timeout": CALL_TIMEOUT, **kwargs}
        self.release_at_once = True
        self.granted: lease_service_pb2.AcquireLeaseResponse | None = None
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = lease_service_pb2_grpc.LeaseServiceStub(channel)
            try:
                self.granted = stub.AcquireLease(self.request, **self.kwargs)
                if self.release_at_once:
                    release(stub, self.granted)
            except grpc.RpcError as error:
                self.error = error


def finish(threads: list[threading.Thread], timeout: float = CALL_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], "waiters still running"


# ---------------------------------------------------------------- order


def test_waiters_are_granted_in_arrival_order(broker, lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    holders = [f"waiter-{n:02d}" for n in range(WAITERS)]
    threads = []
    for n, holder in enumerate(holders):
        thread = Waiter(broker.address, calc_request(holder))
        thread.start()
        threads.append(thread)
        wait_until(
            lambda expected=holders[: n + 1]: waiting_holders(lease_stub) == expected,
            QUEUED_TIMEOUT,
            f"{holder} queued behind the others",
        )
    listed = all_waiters(lease_stub)
    assert [w.position for w in listed] == list(range(WAITERS))
    assert [w.waiter_id for w in listed] == sorted(w.waiter_id for w in listed)
    assert all(w.blocked_requirement_index == 0 for w in listed)

    release(lease_stub, first)
    finish(threads)

    assert [t.error for t in threads] == [None] * WAITERS
    lease_of = {t.granted.lease.lease_id: t.request.holder for t in threads}
    order = grant_order(broker, "calc-1")
    assert order[0] == first.lease.lease_id
    assert [lease_of[lease_id] for lease_id in order[1:]] == holders
    created = [seconds(t.granted.lease.create_time) for t in threads]
    assert created == sorted(created)
    ended = all_leases(lease_stub, resource="calc-1", state=lease_pb2.LEASE_STATE_RELEASED)
    assert len(ended) == WAITERS + 1
    assert waiting_holders(lease_stub) == []


def test_a_higher_priority_waiter_is_served_first(broker, lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    low = Waiter(broker.address, calc_request("low"))
    low.start()
    wait_until(lambda: waiting_holders(lease_stub) == ["low"], QUEUED_TIMEOUT, "low queued")
    high = Waiter(broker.address, calc_request("high", priority=10))
    high.start()
    wait_until(lambda: waiting_holders(lease_stub) == ["high", "low"], QUEUED_TIMEOUT, "high first")

    release(lease_stub, first)
    finish([low, high])

    order = grant_order(broker, "calc-1")
    assert order == [first.lease.lease_id, high.granted.lease.lease_id, low.granted.lease.lease_id]


# ------------------------------------------------------- WatchAcquireLease


def watch(lease_stub, request: lease_service_pb2.AcquireLeaseRequest):
    return lease_stub.WatchAcquireLease(
        lease_service_pb2.WatchAcquireLeaseRequest(request=request), timeout=CALL_TIMEOUT
    )


def next_waiting(stream) -> lease_pb2.QueueStatus:
    message = next(stream)
    assert message.WhichOneof("event") == "waiting", message
    return message.waiting


def next_granted(stream) -> lease_service_pb2.AcquireLeaseResponse:
    """The grant, read past any `waiting` updates sent before it (the
    contract allows one whenever the request's status changes); the stream's
    own deadline bounds the wait."""
    for message in stream:
        if message.WhichOneof("event") == "granted":
            return message.granted
    raise AssertionError("the stream ended without a grant")


def waiting_until(stream, condition: Callable[[lease_pb2.QueueStatus], bool]):
    """The first `waiting` update that meets `condition`, read past earlier
    ones; a grant before it fails the test."""
    for message in stream:
        assert message.WhichOneof("event") == "waiting", message
        if condition(message.waiting):
            return message.waiting
    raise AssertionError("the stream ended before the expected status")


def test_watch_streams_positions_and_holders_then_the_grant(lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    before = time.time()
    a = watch(lease_stub, calc_request("a", max_wait=60))
    status_a = next_waiting(a)
    assert status_a.position == 0
    assert status_a.blocked.kind == "Calculator"
    assert status_a.blocked.requirement_index == 0
    assert [(h.resource, h.lease_id, h.holder) for h in status_a.blocked.holders] == [
        ("calc-1", first.lease.lease_id, "first")
    ]
    assert before + 60 - 1e-3 <= seconds(status_a.deadline) <= time.time() + 60 + 1e-3
    b = watch(lease_stub, calc_request("b"))
    assert next_waiting(b).position == 1
    c = watch(lease_stub, calc_request("c", priority=10))
    status_c = next_waiting(c)
    assert status_c.position == 0
    assert [w.waiter_id for w in all_waiters(lease_stub)] == [
        status_c.waiter_id,
        status_a.waiter_id,
        next(w.waiter_id for w in all_waiters(lease_stub) if w.holder == "b"),
    ]

    # A later, higher-priority arrival moves the others back.
    assert waiting_until(a, lambda status: status.position == 1)
    assert waiting_until(b, lambda status: status.position == 2)

    release(lease_stub, first)
    granted_c = next_granted(c)
    assert granted_c.lease.holder == "c"
    assert [g.resource.name for g in granted_c.lease.grants] == ["calc-1"]
    assert granted_c.secret
    # The others now wait for c's lease.
    waiting_until(
        a,
        lambda status: (
            status.position == 0
            and [h.lease_id for h in status.blocked.holders] == [granted_c.lease.lease_id]
        ),
    )
    waiting_until(b, lambda status: status.position == 1)

    release(lease_stub, granted_c)
    granted_a = next_granted(a)
    assert granted_a.lease.holder == "a"
    assert list(a) == []
    release(lease_stub, granted_a)
    messages = list(b)
    assert messages[-1].WhichOneof("event") == "granted"
    assert messages[-1].granted.lease.holder == "b"
    assert all(m.waiting.position == 0 for m in messages[:-1])


def test_a_cancelled_watch_leaves_the_queue(lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    gone = watch(lease_stub, calc_request("gone"))
    next_waiting(gone)
    staying = watch(lease_stub, calc_request("staying"))
    next_waiting(staying)

    gone.cancel()
    wait_until(
        lambda: waiting_holders(lease_stub) == ["staying"], LEAVE_TIMEOUT, "gone left the queue"
    )
    assert waiting_until(staying, lambda status: status.position == 0)
    release(lease_stub, first)
    assert next_granted(staying).lease.holder == "staying"
    assert all_leases(lease_stub, holder="gone") == []


# ------------------------------------------------------------ ListWaiters


def test_list_waiters_pages_in_serving_order(lease_stub, calculators):
    acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    priorities = [0, 5, 0, -3, 5, 0, 9]
    streams = []
    for n, priority in enumerate(priorities):
        stream = watch(
            lease_stub, calc_request(f"w{n}", priority=priority, request_id=f"secret-request-{n}")
        )
        next_waiting(stream)
        streams.append(stream)
    try:
        first_page = lease_stub.ListWaiters(
            lease_service_pb2.ListWaitersRequest(page_size=3), timeout=RPC_TIMEOUT
        )
        assert len(first_page.waiters) == 3
        assert first_page.next_page_token
        listed = all_waiters(lease_stub, page_size=3)
    finally:
        for stream in streams:
            stream.cancel()

    assert [w.holder for w in listed] == ["w6", "w1", "w4", "w0", "w2", "w5", "w3"]
    assert [w.position for w in listed] == list(range(len(priorities)))
    assert [w.priority for w in listed] == [9, 5, 5, 0, 0, 0, -3]
    # Whoever knows a waiting request's id could take its grant: no listing shows it.
    assert not any(b"secret-request-" in w.SerializeToString() for w in listed)
    assert [w.holder for w in first_page.waiters] == ["w6", "w1", "w4"]
    assert all(w.requirements[0].kind == "Calculator" for w in listed)
    assert all(seconds(w.deadline) - seconds(w.enqueue_time) == pytest.approx(60) for w in listed)
    wait_until(lambda: all_waiters(lease_stub) == [], LEAVE_TIMEOUT, "every waiter left")


def test_list_waiters_refuses_a_bad_page_token(lease_stub):
    with pytest.raises(grpc.RpcError) as error:
        lease_stub.ListWaiters(
            lease_service_pb2.ListWaitersRequest(page_token="not-a-token"), timeout=RPC_TIMEOUT
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -------------------------------------------------------------- deadlines


def test_a_call_deadline_ends_the_wait_holding_nothing(broker, lease_stub, calculators):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    late = Waiter(broker.address, calc_request("late", max_wait=60), timeout=3.0)
    late.start()
    wait_until(lambda: waiting_holders(lease_stub) == ["late"], QUEUED_TIMEOUT, "late queued")
    finish([late], timeout=10)

    assert late.granted is None
    assert late.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: waiting_holders(lease_stub) == [], LEAVE_TIMEOUT, "late left the queue")
    release(lease_stub, first)
    assert all_leases(lease_stub, holder="late") == []
    assert acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="next")


GHOSTS = 30


def test_a_deadline_passing_during_the_acquire_leaves_no_ghost_in_the_queue(
    lease_stub, calculators
):
    """Call deadlines of a few milliseconds end the calls while the broker is
    still queueing them: each request must leave the queue all the same, or
    it would hold up (and later be granted) what others wait for."""
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    for n in range(GHOSTS):
        with pytest.raises(grpc.RpcError) as error:
            lease_stub.AcquireLease(
                calc_request(f"ghost-{n}", max_wait=60), timeout=0.003 + n * 0.001
            )
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    wait_until(
        lambda: waiting_holders(lease_stub) == [],
        LEAVE_TIMEOUT,
        "every caller gone to have left the queue",
    )
    release(lease_stub, first)
    assert acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="next")
    assert [lease.holder for lease in all_leases(lease_stub, resource="calc-1")] == [
        "next",
        "first",
    ]


def test_a_max_wait_shorter_than_the_call_ends_with_deadline_exceeded(
    broker, lease_stub, calculators
):
    first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    started = time.monotonic()
    impatient = Waiter(broker.address, calc_request("impatient", max_wait=1.0), timeout=20)
    impatient.start()
    finish([impatient], timeout=15)
    waited = time.monotonic() - started

    assert impatient.granted is None
    assert impatient.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.0 <= waited < 10.0
    assert waiting_holders(lease_stub) == []
    release(lease_stub, first)
    assert all_leases(lease_stub, holder="impatient") == []
    assert get_lease(lease_stub, first.lease.lease_id).state == lease_pb2.LEASE_STATE_RELEASED


def test_resources_held_and_not_waiting_is_resource_exhausted(lease_stub, calculators):
    acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    request = calc_request("eager")
    request.ClearField("max_wait")
    with pytest.raises(grpc.RpcError) as error:
        lease_stub.AcquireLease(request, timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert waiting_holders(lease_stub) == []


def test_a_request_that_can_never_be_served_fails_instead_of_waiting(lease_stub, calculators):
    with pytest.raises(grpc.RpcError) as error:
        lease_stub.AcquireLease(calc_request("dreamer", name="calc-99"), timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert waiting_holders(lease_stub) == []


# ----------------------------------------------------------- request ids


@pytest.mark.parametrize("held", [False, True], ids=["free", "held"])
def test_one_request_id_sent_concurrently_makes_one_lease(broker, lease_stub, calculators, held):
    first = None
    if held:
        first = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="first")
    barrier = threading.Barrier(2)

    class Twin(Waiter):
        def run(self) -> None:
            barrier.wait(QUEUED_TIMEOUT)
            super().run()

    twins = [Twin(broker.address, calc_request("twin", request_id="once")) for _ in range(2)]
    for twin in twins:
        twin.release_at_once = False
        twin.start()
    if held:
        wait_until(lambda: waiting_holders(lease_stub) == ["twin"], QUEUED_TIMEOUT, "one waiter")
        release(lease_stub, first)
    finish(twins)

    assert [t.error for t in twins] == [None, None]
    a, b = (t.granted for t in twins)
    assert a.lease.lease_id == b.lease.lease_id
    assert a.secret == b.secret
    [lease] = all_leases(lease_stub, holder="twin")
    assert b"once" not in lease.SerializeToString()
    assert lease.lease_id == a.lease.lease_id
    assert grant_order(broker, "calc-1")[-1] == a.lease.lease_id
    assert len(grant_order(broker, "calc-1")) == (2 if held else 1)
