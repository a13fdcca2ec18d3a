"""Sessions through the real server and the raw `OpenSession` stream: the
session's keep-alives renew its leases, `close` releases them, a broken
stream or silent keep-alives make them expire within a bounded time, and a
session that is not open cannot take new leases. A session that ends
without its client closing it is recorded as lost (SESSION_LOST)."""

from __future__ import annotations

import queue
import time

import grpc
import pytest

from broker.api.convert import duration
from broker.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    lease_pb2,
    lease_service_pb2,
)
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import (
    acquire,
    all_leases,
    get_lease,
    precondition,
    requirement,
    violation_fields,
    wait_until,
)
from tests.integration.test_queue_api import all_waiters, calc_request

STREAM_TIMEOUT = 30.0
# How long the broker may take to end a session whose stream broke, or whose
# keep-alives stopped (beyond their timeout): a sweep runs every second.
ENDING_BOUND = 5.0


class SessionStream:
    """One `OpenSession` call fed from a queue, so the test decides when each
    keep-alive goes."""

    def __init__(self, lease_stub, keepalive_timeout: float | None = None, holder: str = ""):
        self._outbox: queue.Queue[lease_service_pb2.OpenSessionRequest | None] = queue.Queue()
        first = lease_service_pb2.OpenSessionRequest(holder=holder)
        if keepalive_timeout is not None:
            first.keepalive_timeout.CopyFrom(duration(keepalive_timeout))
        self._outbox.put(first)
        self.responses = lease_stub.OpenSession(
            iter(self._outbox.get, None), timeout=STREAM_TIMEOUT
        )

    def opened(self) -> lease_service_pb2.OpenSessionResponse:
        return next(self.responses)

    def keep_alive(self) -> lease_service_pb2.OpenSessionResponse:
        self._outbox.put(lease_service_pb2.OpenSessionRequest())
        return next(self.responses)

    def close(self) -> list[lease_service_pb2.OpenSessionResponse]:
        """Sends `close` and half-closes; returns what the broker still sent."""
        self._outbox.put(lease_service_pb2.OpenSessionRequest(close=True))
        self._outbox.put(None)
        return list(self.responses)

    def cancel(self) -> None:
        self.responses.cancel()
        self._outbox.put(None)


@pytest.fixture
def open_stream(lease_stub):
    """Opens session streams; each is cancelled at the end of the test."""
    streams: list[SessionStream] = []

    def open_(**kwargs) -> SessionStream:
        stream = SessionStream(lease_stub, **kwargs)
        streams.append(stream)
        return stream

    yield open_
    for stream in streams:
        stream.cancel()


def seconds(timestamp) -> float:
    return timestamp.ToNanoseconds() / 1e9


def acquire_in(lease_stub, session_id: str, ttl: float = 60.0, name: str = "calc-1"):
    request = lease_service_pb2.AcquireLeaseRequest(
        requirements=[requirement("Calculator", name=name)],
        holder="tester",
        ttl=duration(ttl),
        session_id=session_id,
    )
    return lease_stub.AcquireLease(request, timeout=RPC_TIMEOUT)


def ended_lease(lease_stub, lease_id: str) -> lease_pb2.Lease | None:
    lease = get_lease(lease_stub, lease_id)
    return None if lease.state == lease_pb2.LEASE_STATE_ACTIVE else lease


def test_keep_alives_renew_the_sessions_leases(lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=5, holder="alice")
    before = time.time()
    opened = stream.opened()
    assert opened.session_id
    assert opened.keepalive_timeout.ToTimedelta().total_seconds() == 5
    assert before + 5 - 1e-3 <= seconds(opened.expire_time) <= time.time() + 5 + 1e-3
    granted = acquire_in(lease_stub, opened.session_id, ttl=20)
    assert granted.lease.session_id == opened.session_id
    expire_times = [seconds(granted.lease.expire_time)]

    for _ in range(3):
        kept = stream.keep_alive()
        assert kept.session_id == opened.session_id
        lease = get_lease(lease_stub, granted.lease.lease_id)
        assert lease.state == lease_pb2.LEASE_STATE_ACTIVE
        expire_times.append(seconds(lease.expire_time))
        # Both deadlines were moved from the same instant.
        assert expire_times[-1] - seconds(kept.expire_time) == pytest.approx(20 - 5, abs=1e-3)
    assert expire_times == sorted(set(expire_times))


def test_close_releases_the_sessions_leases(lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=5)
    session_id = stream.opened().session_id
    granted = acquire_in(lease_stub, session_id)

    assert stream.close() == []

    lease = get_lease(lease_stub, granted.lease.lease_id)
    assert lease.state == lease_pb2.LEASE_STATE_RELEASED
    assert "session" in lease.end_reason
    assert "closed" in lease.end_reason
    assert acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="next")
    error = expect_failed_precondition(lease_stub, session_id)
    assert precondition(error).type == "SESSION_ENDED"


def test_a_broken_stream_expires_the_sessions_leases(lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=60)
    session_id = stream.opened().session_id
    granted = acquire_in(lease_stub, session_id, ttl=300)
    other = acquire(lease_stub, requirement("Calculator", name="calc-2"), holder="other")

    broken_at = time.time()
    stream.cancel()
    lease = wait_until(
        lambda: ended_lease(lease_stub, granted.lease.lease_id), ENDING_BOUND, "the lease ended"
    )

    assert lease.state == lease_pb2.LEASE_STATE_EXPIRED
    assert "session" in lease.end_reason
    assert "stream broke" in lease.end_reason
    assert 0 <= seconds(lease.end_time) - broken_at <= ENDING_BOUND
    assert get_lease(lease_stub, other.lease.lease_id).state == lease_pb2.LEASE_STATE_ACTIVE
    assert precondition(expect_failed_precondition(lease_stub, session_id)).type == (
        "SESSION_ENDED"
    )


def test_silent_keep_alives_expire_the_session(lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=1)
    opened = stream.opened()
    granted = acquire_in(lease_stub, opened.session_id, ttl=300)

    lease = wait_until(
        lambda: ended_lease(lease_stub, granted.lease.lease_id),
        1 + ENDING_BOUND,
        "the session's keep-alives to be missed",
    )

    assert lease.state == lease_pb2.LEASE_STATE_EXPIRED
    assert "keep-alives stopped" in lease.end_reason
    assert seconds(lease.end_time) >= seconds(opened.expire_time)
    # The call ends with the session, and says why (not a plain end of stream).
    with pytest.raises(grpc.RpcError) as error:
        list(stream.responses)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_broken_stream_takes_the_sessions_waiters_out_of_the_queue(
    lease_stub, calculators, open_stream
):
    keeper = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="keeper")
    stream = open_stream(keepalive_timeout=60)
    session_id = stream.opened().session_id
    mine = lease_stub.WatchAcquireLease(
        lease_service_pb2.WatchAcquireLeaseRequest(
            request=calc_request("mine", session_id=session_id)
        ),
        timeout=STREAM_TIMEOUT,
    )
    assert next(mine).WhichOneof("event") == "waiting"
    assert [w.holder for w in all_waiters(lease_stub)] == ["mine"]

    stream.cancel()
    wait_until(lambda: all_waiters(lease_stub) == [], ENDING_BOUND, "the waiter left")

    # Its call ends without a grant (the contract names no code for this case).
    with pytest.raises(grpc.RpcError) as error:
        list(mine)
    assert error.value.code() in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    release = lease_service_pb2.ReleaseLeaseRequest(
        lease_id=keeper.lease.lease_id, secret=keeper.secret
    )
    lease_stub.ReleaseLease(release, timeout=RPC_TIMEOUT)
    assert all_leases(lease_stub, holder="mine") == []


def expect_failed_precondition(lease_stub, session_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        acquire_in(lease_stub, session_id, name="calc-3")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return error.value


def test_acquire_with_an_unknown_session_fails(lease_stub, calculators):
    violation = precondition(expect_failed_precondition(lease_stub, "no-such-session"))
    assert (violation.type, violation.subject) == ("SESSION_ENDED", "sessions/no-such-session")
    assert all_leases(lease_stub) == []


@pytest.mark.parametrize("timeout", [0.0, 0.5, 301.0])
def test_keepalive_timeout_out_of_range_is_invalid(lease_stub, open_stream, timeout):
    stream = open_stream(keepalive_timeout=timeout)
    with pytest.raises(grpc.RpcError) as error:
        stream.opened()
    assert violation_fields(error.value) == ["keepalive_timeout"]


# ------------------------------------------------------------ lost sessions


def lost_sessions(channel) -> list[event_pb2.Event]:
    request = event_service_pb2.ListEventsRequest(
        filter=event_service_pb2.EventFilter(types=[event_pb2.EVENT_TYPE_SESSION_LOST])
    )
    stub = event_service_pb2_grpc.EventServiceStub(channel)
    return list(stub.ListEvents(request, timeout=RPC_TIMEOUT).events)


def ended(lease_stub, lease_id: str) -> bool:
    return get_lease(lease_stub, lease_id).state != lease_pb2.LEASE_STATE_ACTIVE


def test_a_broken_stream_records_the_session_lost(channel, lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=60, holder="alice")
    session_id = stream.opened().session_id
    lease_id = acquire_in(lease_stub, session_id, ttl=300).lease.lease_id

    stream.cancel()
    wait_until(lambda: lost_sessions(channel), ENDING_BOUND, "the session to be lost")

    [lost] = lost_sessions(channel)
    assert (lost.actor, lost.reason) == ("alice", "its client's stream broke")
    assert dict(lost.detail) == {
        "session_id": session_id,
        "principal": "alice",
        "leases": [lease_id],
    }
    assert ended(lease_stub, lease_id)


def test_silent_keep_alives_record_the_session_lost(channel, lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=1, holder="alice")
    session_id = stream.opened().session_id
    lease_id = acquire_in(lease_stub, session_id, ttl=300).lease.lease_id

    wait_until(lambda: lost_sessions(channel), 1 + ENDING_BOUND, "the session to be lost")

    [lost] = lost_sessions(channel)
    assert lost.reason == "its keep-alives stopped"
    assert dict(lost.detail)["session_id"] == session_id
    assert list(dict(lost.detail)["leases"]) == [lease_id]
    with pytest.raises(grpc.RpcError):
        list(stream.responses)


def test_a_closed_session_is_not_lost(channel, lease_stub, calculators, open_stream):
    stream = open_stream(keepalive_timeout=60, holder="alice")
    session_id = stream.opened().session_id
    lease_id = acquire_in(lease_stub, session_id).lease.lease_id

    assert stream.close() == []

    assert get_lease(lease_stub, lease_id).state == lease_pb2.LEASE_STATE_RELEASED
    assert lost_sessions(channel) == []
