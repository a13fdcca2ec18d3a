"""Sessions through `Sessions` and `Leases` on a fake clock: keep-alives renew
the bound leases; a clean close releases them; a broken stream or stopped
keep-alives (as the broker attending the stream sees them) make them expire;
either way the session's waiting requests leave the queue and the next
waiter, not the session's, is served. A session no broker attends any more is
ended by the sweep, and its leases live on by their own TTL."""

from __future__ import annotations

import pytest

from broker.domain.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from broker.domain.leasing import Leases
from broker.domain.sessions import SessionEnding, Sessions
from broker.domain.values import (
    AcquireRequest,
    Granted,
    LeaseState,
    SessionState,
    WaiterState,
    Waiting,
)
from broker.models import queue as queue_model
from broker.models.session import Session
from tests.unit.builders import field_of, need, phone

KEEPALIVE_TIMEOUT = 10.0
MAX_KEEPALIVE_TIMEOUT = 60.0


@pytest.fixture
def sessions(leases) -> Sessions:
    return Sessions(
        leases,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        max_keepalive_timeout=MAX_KEEPALIVE_TIMEOUT,
    )


def acquire(
    leases: Leases,
    holder: str,
    session_id: str = "",
    ttl: float = 30.0,
    max_wait: float = 0.0,
    name: str = "p1",
) -> Granted | Waiting:
    return leases.acquire(
        AcquireRequest(
            (need("Phone", name=name),),
            ttl=ttl,
            holder=holder,
            max_wait=max_wait,
            session_id=session_id,
        )
    )


def session_state(session_id: str) -> SessionState:
    return SessionState(Session.get_by_id(session_id).state)


ENDINGS = [
    pytest.param(
        SessionEnding.CLOSED,
        LeaseState.RELEASED,
        SessionState.CLOSED,
        "its session ended: closed by its client",
        id="closed",
    ),
    pytest.param(
        SessionEnding.BROKEN,
        LeaseState.EXPIRED,
        SessionState.EXPIRED,
        "its session ended: its client's stream broke",
        id="stream-broke",
    ),
    pytest.param(
        SessionEnding.SILENT,
        LeaseState.EXPIRED,
        SessionState.EXPIRED,
        "its session ended: its keep-alives stopped",
        id="keep-alives-stopped",
    ),
]
"""How the broker attending a session's stream may see it end, and what
then becomes of the session and its leases."""


# ------------------------------------------------------------ keep-alives


def test_open_uses_the_default_timeout_and_sets_the_expiry(sessions, clock):
    session = sessions.open("alice", None)

    assert session.keepalive_timeout == KEEPALIVE_TIMEOUT
    assert session.expire_time == clock.now + KEEPALIVE_TIMEOUT
    assert session.holder == "alice"
    assert session_state(session.session_id) == SessionState.OPEN


def test_keep_alives_renew_the_bound_leases_past_their_ttl(inventory, leases, sessions, clock):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    lease = acquire(leases, "alice", session.session_id, ttl=20).lease
    assert lease.session_id == session.session_id

    for _ in range(5):  # 40 s in all, twice the lease's TTL
        clock.advance(8)
        kept = sessions.keep_alive(session.session_id)
        assert kept.expire_time == clock.now + KEEPALIVE_TIMEOUT
        assert leases.get(lease.lease_id).expire_time == clock.now + 20
        assert leases.expire_due() == 0
    assert leases.get(lease.lease_id).state == LeaseState.ACTIVE


@pytest.mark.parametrize(("ending", "lease_state", "state", "reason"), ENDINGS)
def test_a_session_ending_ends_its_leases(
    inventory, leases, sessions, clock, ending, lease_state, state, reason
):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    session = sessions.open("alice", None)
    bound = acquire(leases, "alice", session.session_id, ttl=300).lease
    unbound = acquire(leases, "alice", ttl=300, name="p2").lease

    sessions.close(session.session_id, ending)

    ended = leases.get(bound.lease_id)
    assert ended.state == lease_state
    assert ended.end_reason == reason
    assert ended.end_time == clock.now
    assert session_state(session.session_id) == state
    assert leases.get(unbound.lease_id).state == LeaseState.ACTIVE
    assert isinstance(acquire(leases, "bob"), Granted)


def test_an_unattended_session_is_ended_by_the_sweep_and_its_leases_live_by_their_ttl(
    inventory, leases, sessions, clock
):
    """The broker attending a stream ends a silent session after one
    timeout; a session still open a second timeout later lost its broker:
    the sweep ends it and its leases, unbound, expire by their own TTL."""
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    keeper = acquire(leases, "keeper", ttl=300, name="p2")
    session = sessions.open("alice", None)
    lease = acquire(leases, "alice", session.session_id, ttl=60).lease
    waiting = acquire(leases, "alice", session.session_id, max_wait=200, name="p2")
    assert isinstance(waiting, Waiting)

    clock.advance(2 * KEEPALIVE_TIMEOUT - 0.001)
    assert leases.expire_due() == 0
    assert session_state(session.session_id) == SessionState.OPEN
    clock.advance(0.001)
    assert leases.expire_due() == 0

    assert session_state(session.session_id) == SessionState.EXPIRED
    assert Session.get_by_id(session.session_id).end_reason == "its broker stopped attending it"
    unbound = leases.get(lease.lease_id)
    assert (unbound.state, unbound.session_id) == (LeaseState.ACTIVE, "")
    assert queue_model.get_waiter(waiting.waiter_id).state == WaiterState.CANCELLED
    leases.release(keeper.lease.lease_id, keeper.secret)
    assert inventory.get("p2").lease_ids == ()

    clock.advance(unbound.expire_time - clock.now)
    assert leases.expire_due() == 1
    expired = leases.get(lease.lease_id)
    assert expired.state == LeaseState.EXPIRED
    assert expired.end_reason == "its TTL ran out"


def test_a_late_keep_alive_ends_the_session_instead_of_reviving_it(
    inventory, leases, sessions, clock
):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    lease = acquire(leases, "alice", session.session_id, ttl=300).lease
    clock.advance(KEEPALIVE_TIMEOUT + 1)

    with pytest.raises(FailedPreconditionError) as error:
        sessions.keep_alive(session.session_id)

    assert error.value.violations[0].type == "SESSION_ENDED"
    assert session_state(session.session_id) == SessionState.EXPIRED
    assert leases.get(lease.lease_id).state == LeaseState.EXPIRED
    assert leases.get(lease.lease_id).end_reason == "its session ended: its keep-alives stopped"


@pytest.mark.parametrize("ending", ["keep_alive", SessionEnding.BROKEN, SessionEnding.SILENT])
def test_a_broker_back_long_after_the_deadline_leaves_the_leases_to_their_ttl(
    inventory, leases, sessions, clock, ending
):
    # The broker was frozen past the session's deadline; meanwhile the client
    # renewed its lease through another broker.
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    granted = acquire(leases, "alice", session.session_id, ttl=300)
    clock.advance(KEEPALIVE_TIMEOUT + 5)
    leases.renew(granted.lease.lease_id, granted.secret)

    if ending == "keep_alive":
        with pytest.raises(FailedPreconditionError):
            sessions.keep_alive(session.session_id)
    else:
        sessions.close(session.session_id, ending)

    assert session_state(session.session_id) == SessionState.EXPIRED
    assert Session.get_by_id(session.session_id).end_reason == "its broker stopped attending it"
    kept = leases.get(granted.lease.lease_id)
    assert (kept.state, kept.session_id) == (LeaseState.ACTIVE, "")
    assert kept.expire_time == clock.now + 300


def test_closing_twice_changes_nothing(inventory, leases, sessions):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    lease = acquire(leases, "alice", session.session_id).lease
    sessions.close(session.session_id, SessionEnding.CLOSED)
    sessions.close(session.session_id, SessionEnding.BROKEN)

    assert session_state(session.session_id) == SessionState.CLOSED
    assert leases.get(lease.lease_id).state == LeaseState.RELEASED


# --------------------------------------------------------------- waiting


@pytest.mark.parametrize(("ending", "lease_state", "state", "reason"), ENDINGS)
def test_a_session_ending_takes_its_waiting_requests_out_of_the_queue(
    inventory, leases, sessions, clock, ending, lease_state, state, reason
):
    inventory.create(phone("p1"))
    keeper = acquire(leases, "keeper", ttl=300)
    session = sessions.open("alice", None)
    mine = acquire(leases, "alice", session.session_id, max_wait=200)
    other = acquire(leases, "bob", max_wait=200)
    assert isinstance(mine, Waiting)
    assert isinstance(other, Waiting)

    sessions.close(session.session_id, ending)

    assert queue_model.get_waiter(mine.waiter_id).state == WaiterState.CANCELLED
    assert [v.waiter_id for v in leases.list_waiters(0, "").items] == [other.waiter_id]
    with pytest.raises(FailedPreconditionError, match="left the queue"):
        leases.wait_status(mine.waiter_id)
    leases.release(keeper.lease.lease_id, keeper.secret)
    assert leases.wait_status(other.waiter_id).lease.holder == "bob"
    assert leases.list(None, "alice", "", 0, "").items == ()


def test_a_request_granted_after_waiting_stays_bound_to_its_session(
    inventory, leases, sessions, clock
):
    inventory.create(phone("p1"))
    keeper = acquire(leases, "keeper", ttl=300)
    session = sessions.open("alice", None)
    waiting = acquire(leases, "alice", session.session_id, ttl=20, max_wait=200)
    leases.release(keeper.lease.lease_id, keeper.secret)
    lease = leases.wait_status(waiting.waiter_id).lease
    assert lease.session_id == session.session_id

    clock.advance(8)
    sessions.keep_alive(session.session_id)
    assert leases.get(lease.lease_id).expire_time == clock.now + 20
    sessions.close(session.session_id, SessionEnding.BROKEN)
    assert leases.get(lease.lease_id).state == LeaseState.EXPIRED


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(("ending", "lease_state", "state", "reason"), ENDINGS)
def test_acquire_with_an_ended_session_fails_and_grants_nothing(
    inventory, leases, sessions, clock, ending, lease_state, state, reason
):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    sessions.close(session.session_id, ending)
    assert session_state(session.session_id) == state

    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, "alice", session.session_id, max_wait=60)

    violation = error.value.violations[0]
    assert (violation.type, violation.subject) == (
        "SESSION_ENDED",
        f"sessions/{session.session_id}",
    )
    assert inventory.get("p1").lease_ids == ()
    assert leases.list_waiters(0, "").items == ()


def test_acquire_with_an_unknown_session_fails(inventory, leases):
    inventory.create(phone("p1"))
    with pytest.raises(FailedPreconditionError) as error:
        acquire(leases, "alice", "no-such-session")
    assert error.value.violations[0].type == "SESSION_ENDED"
    assert inventory.get("p1").lease_ids == ()


def test_keep_alive_of_an_ended_or_unknown_session(sessions):
    session = sessions.open("alice", None)
    sessions.close(session.session_id, SessionEnding.CLOSED)

    with pytest.raises(FailedPreconditionError):
        sessions.keep_alive(session.session_id)
    with pytest.raises(NotFoundError):
        sessions.keep_alive("no-such-session")


@pytest.mark.parametrize("timeout", [0.0, 0.999, MAX_KEEPALIVE_TIMEOUT + 0.001, -1.0])
def test_keepalive_timeout_out_of_range_is_invalid(sessions, timeout):
    with pytest.raises(InvalidArgumentError) as error:
        sessions.open("alice", timeout)
    assert field_of(error) == "keepalive_timeout"
    assert Session.select().count() == 0


@pytest.mark.parametrize("timeout", [1.0, MAX_KEEPALIVE_TIMEOUT])
def test_keepalive_timeout_bounds_are_inclusive(sessions, clock, timeout):
    session = sessions.open("alice", timeout)
    assert session.expire_time == clock.now + timeout


def test_holder_too_long_is_invalid(sessions):
    with pytest.raises(InvalidArgumentError) as error:
        sessions.open("h" * 129, None)
    assert field_of(error) == "holder"
