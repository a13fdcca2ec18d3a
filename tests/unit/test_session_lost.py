"""The SESSION_LOST event on a fake clock: recorded, with the session, its
principal and the leases it ended, when a session ends without its client
closing it (a broken stream, stopped keep-alives, a late keep-alive, no
broker attending it); never for a clean close."""

from __future__ import annotations

import json

import pytest

from broker.domain.errors import FailedPreconditionError
from broker.domain.sessions import SessionEnding, Sessions
from broker.domain.values import AcquireRequest, EventType
from tests.unit.builders import events_of, need, phone

KEEPALIVE_TIMEOUT = 10.0


@pytest.fixture
def sessions(leases) -> Sessions:
    return Sessions(leases, keepalive_timeout=KEEPALIVE_TIMEOUT, max_keepalive_timeout=60.0)


def bound_lease(leases, session_id: str, name: str) -> str:
    request = AcquireRequest(
        (need("Phone", name=name),), ttl=300, holder="alice", session_id=session_id
    )
    return leases.acquire(request).lease.lease_id


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        (SessionEnding.BROKEN, "its client's stream broke"),
        (SessionEnding.SILENT, "its keep-alives stopped"),
    ],
)
def test_a_broken_or_silent_session_is_recorded_lost_with_its_leases(
    inventory, leases, sessions, clock, ending, reason
):
    inventory.create(phone("p1"))
    inventory.create(phone("p2"))
    session = sessions.open("alice", None)
    ids = sorted(bound_lease(leases, session.session_id, name) for name in ("p1", "p2"))

    sessions.close(session.session_id, ending)

    [lost] = events_of(EventType.SESSION_LOST)
    assert (lost.actor, lost.reason, lost.time) == ("alice", reason, clock.now)
    assert json.loads(lost.detail) == {
        "session_id": session.session_id,
        "principal": "alice",
        "leases": ids,
    }
    # The leases' own events stay as they were.
    assert sorted(e.lease_id for e in events_of(EventType.LEASE_EXPIRED)) == ids


def test_a_clean_close_is_not_lost(inventory, leases, sessions):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    bound_lease(leases, session.session_id, "p1")

    sessions.close(session.session_id, SessionEnding.CLOSED)

    assert events_of(EventType.SESSION_LOST) == []
    assert len(events_of(EventType.LEASE_RELEASED)) == 1


def test_a_keep_alive_after_the_deadline_records_the_loss(inventory, leases, sessions, clock):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    lease_id = bound_lease(leases, session.session_id, "p1")
    clock.advance(KEEPALIVE_TIMEOUT)

    with pytest.raises(FailedPreconditionError):
        sessions.keep_alive(session.session_id)

    [lost] = events_of(EventType.SESSION_LOST)
    assert lost.reason == "its keep-alives stopped"
    assert json.loads(lost.detail)["leases"] == [lease_id]


def test_an_unattended_session_is_lost_but_ends_no_lease(inventory, leases, sessions, clock):
    inventory.create(phone("p1"))
    session = sessions.open("alice", None)
    bound_lease(leases, session.session_id, "p1")
    clock.advance(2 * KEEPALIVE_TIMEOUT)

    leases.expire_due()

    [lost] = events_of(EventType.SESSION_LOST)
    assert lost.reason == "its broker stopped attending it"
    assert json.loads(lost.detail) == {
        "session_id": session.session_id,
        "principal": "alice",
        "leases": [],
    }
    assert events_of(EventType.LEASE_EXPIRED) == []
