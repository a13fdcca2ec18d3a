"""Ending leases and sessions, inside the caller's write transaction: a
lease released, revoked or past its TTL gives its resources back to the
queue (lock-delayed ones once their delay passes) and records why; a
session that closed, expired or was orphaned ends its leases and takes its
waiting requests out of the queue."""

from __future__ import annotations

import json

from broker.domain import events
from broker.domain.granting import principal_of
from broker.domain.kinds import KindRegistry
from broker.domain.queue import WaitQueue
from broker.domain.values import EventType, LeaseState, SessionState, WaiterState
from broker.models import lease as lease_model
from broker.models import locks
from broker.models import queue as queue_model
from broker.models import resource as resource_model
from broker.models import session as session_model

EXPIRY_BATCH = 500

ENDED = {
    LeaseState.RELEASED: ("LEASE_RELEASED", "was released"),
    LeaseState.EXPIRED: ("LEASE_EXPIRED", "expired: its TTL ran out before it was renewed"),
    LeaseState.REVOKED: ("LEASE_REVOKED", "was revoked"),
}
_END_EVENTS = {
    LeaseState.RELEASED: EventType.LEASE_RELEASED,
    LeaseState.EXPIRED: EventType.LEASE_EXPIRED,
    LeaseState.REVOKED: EventType.LEASE_REVOKED,
}


def kinds_of(grants: list[lease_model.LeaseGrant]) -> set[str]:
    """The kinds of a lease's grants, as their snapshots recorded them."""
    return {json.loads(grant.snapshot)["kind"] for grant in grants}


def grant_events(
    event_type: EventType,
    lease: lease_model.Lease,
    grants: list[lease_model.LeaseGrant],
    now: float,
    actor: str,
    reason: str = "",
) -> list[dict]:
    """One event per granted resource of a lease, as a change of the lease
    records it."""
    return [
        events.event(
            event_type,
            now,
            resource=grant.resource_name,
            kind=json.loads(grant.snapshot)["kind"],
            lease_id=lease.id,
            fencing_token=grant.fencing_token,
            actor=actor,
            reason=reason,
        )
        for grant in grants
    ]


def _session_lost(
    session: session_model.Session, now: float, reason: str, lease_ids: list[str]
) -> dict:
    """The event of a session that ended without its client closing it."""
    return events.event(
        EventType.SESSION_LOST,
        now,
        actor=session.holder,
        reason=reason,
        detail={"session_id": session.id, "principal": session.holder, "leases": lease_ids},
    )


class Endings:
    """Ends leases and sessions for `Leases` and `Sessions`; what it frees
    is offered to `queue`, whose pass the transaction makes."""

    def __init__(self, kinds: KindRegistry, queue: WaitQueue):
        self.kinds = kinds
        self.queue = queue

    def orphan_session(self, session: session_model.Session, now: float) -> None:
        """Ends a session whose broker stopped attending it (its deadline
        passed by another timeout unnoticed): its leases stay, bound to
        nothing, and live by their own TTL. The session is lost all the same."""
        reason = "its broker stopped attending it"
        session_model.end_session(session.id, SessionState.EXPIRED, now, reason)
        session_model.detach_leases(session.id, LeaseState.ACTIVE)
        self.queue.leave(
            queue_model.cancel_session_waiters(
                session.id, WaiterState.WAITING, WaiterState.CANCELLED, now
            )
        )
        events.record(_session_lost(session, now, reason, []))

    def end_session(
        self, session: session_model.Session, state: SessionState, now: float, reason: str
    ) -> int:
        """Ends a session inside the caller's transaction: its leases end
        (released if it closed cleanly, else expired) and its waiting
        requests leave the queue; a session that did not close cleanly is
        recorded as lost, with the leases it ended. Returns how many leases
        ended."""
        session_model.end_session(session.id, state, now, reason)
        lease_ids = session_model.lease_ids_of(session.id, LeaseState.ACTIVE)
        leases = lease_model.leases_by_id(lease_ids)
        grants = lease_model.grants_of(lease_ids)
        lease_state = LeaseState.RELEASED if state == SessionState.CLOSED else LeaseState.EXPIRED
        for lease in leases.values():
            self.end(lease, grants[lease.id], lease_state, now, f"its session ended: {reason}", "")
        self.queue.leave(
            queue_model.cancel_session_waiters(
                session.id, WaiterState.WAITING, WaiterState.CANCELLED, now
            )
        )
        if state != SessionState.CLOSED:
            events.record(_session_lost(session, now, reason, sorted(leases)))
        return len(leases)

    def expire_due(self, now: float) -> int:
        """Ends every lease past its TTL, in batches."""
        expired = 0
        while True:
            due = lease_model.due_lease_ids(LeaseState.ACTIVE, now, EXPIRY_BATCH)
            grants = lease_model.grants_of(due)
            kinds = set().union(*(kinds_of(of_lease) for of_lease in grants.values()))
            locks.require(locks.Level.SHARED, kinds, "expiring leases")
            for lease in lease_model.lock_due_leases(due, LeaseState.ACTIVE, now).values():
                self.end(lease, grants[lease.id], LeaseState.EXPIRED, now, "its TTL ran out", "")
                expired += 1
            if len(due) < EXPIRY_BATCH:
                return expired

    def end(
        self,
        lease: lease_model.Lease,
        grants: list[lease_model.LeaseGrant],
        state: LeaseState,
        now: float,
        reason: str,
        actor: str,
    ) -> None:
        """Ends one lease inside the caller's transaction: frees its
        resources (keeping them out of reach for their kind's lock-delay if
        the holder vanished rather than released them) and records an event
        for each. Its resources are offered to the queue, whose pass the
        transaction makes."""
        event_type = _END_EVENTS[state]
        # Resources given back early are another lease's business by now.
        grants = lease_model.held(grants)
        locks.require(locks.Level.SHARED, kinds_of(grants), "freeing resources")
        freed = lease_model.free_resources_of([lease.id])
        delayed = self._lock_delay(grants, now) if state == LeaseState.EXPIRED else set()
        self.queue.offer([row for row in freed if row[0] not in delayed])
        self.queue.released_by(principal_of(lease))
        lease_model.end_leases([lease.id], state, now, reason)
        lease.state, lease.end_time, lease.end_reason = state, now, reason
        events.record(*grant_events(event_type, lease, grants, now, actor, reason))

    def give_back(
        self,
        lease: lease_model.Lease,
        grants: list[lease_model.LeaseGrant],
        now: float,
        actor: str,
    ) -> None:
        """Frees some of an active lease's resources, which the lease goes on
        without (`ReleaseResources`): each is offered to the queue and
        recorded as released, as a released lease's are."""
        locks.require(locks.Level.SHARED, kinds_of(grants), "freeing resources")
        freed = lease_model.free_resources(
            lease.id, [g.resource_id for g in grants if g.resource_id is not None]
        )
        self.queue.offer(freed)
        self.queue.released_by(principal_of(lease))
        lease_model.release_grants([g.id for g in grants], now)
        reason = "given back by its holder, who keeps the rest of the lease"
        for grant in grants:
            grant.release_time = now
        events.record(*grant_events(EventType.LEASE_RELEASED, lease, grants, now, actor, reason))

    def _lock_delay(self, grants: list[lease_model.LeaseGrant], now: float) -> set[int]:
        """Keeps the resources of lock-delayed kinds out of reach; returns them."""
        delayed = set()
        for grant in grants:
            kind = self.kinds.find(json.loads(grant.snapshot)["kind"])
            if kind is not None and kind.spec.lock_delay > 0 and grant.resource_id is not None:
                resource_model.delay_until([grant.resource_id], now + kind.spec.lock_delay)
                delayed.add(grant.resource_id)
        return delayed
