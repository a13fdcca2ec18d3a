"""The wait queue: requests whose resources are held now wait here, in the
database, and are granted by whichever call frees what they need.

Order and fairness. Waiting requests are served by priority, then arrival.
Each dispatch pass walks them in that order over the free resources: a
request that can be served in full is granted; one that cannot reserves the
free resources its best partial assignment uses, and no request behind it
may take those. So a later request is granted before an earlier one only
with resources the earlier one does not need; an earlier request is never
overtaken on a resource it needs, and a request for three resources gets
them as they come free, however many single requests arrive after it.
Nothing is held while waiting, so waiting cannot deadlock.

Every function runs inside the caller's write transaction; the ids of the
requests granted are collected in `granted` for the caller to announce
after its commit.
"""

from __future__ import annotations

from broker.domain.errors import BrokerError
from broker.domain.granting import (
    Granter,
    decode_requirements,
    encode_requirements,
)
from broker.domain.values import AcquireRequest, WaiterState
from broker.models import queue as queue_model


class WaitQueue:
    """The queue's rules; storage is `broker.models.queue`."""

    def __init__(self, granter: Granter):
        self.granter = granter
        self.granted: list[int] = []

    def enqueue(
        self, request: AcquireRequest, ttl: float, lease_id: str, now: float, deadline: float
    ) -> int:
        """Puts a request in the queue and recomputes the reservations (it
        may rank before requests already waiting); returns its id."""
        waiter_id = queue_model.insert_waiter(
            {
                "request_id": request.request_id or None,
                "lease_id": lease_id,
                "holder": request.holder,
                "priority": request.priority,
                "requirements": encode_requirements(request.requirements),
                "ttl": ttl,
                "session_id": request.session_id or None,
                "state": int(WaiterState.WAITING),
                "enqueue_time": now,
                "deadline": deadline,
            }
        )
        self.dispatch(now)
        return waiter_id

    def dispatch(self, now: float) -> None:
        """One pass over the waiting requests in order: grant whoever can be
        served in full, reserve for the others."""
        waiters = queue_model.waiting(WaiterState.WAITING)
        queue_model.clear_reservations()
        if not waiters:
            return
        free_kinds = queue_model.kinds_with_free_resources(now)
        reserved: set[int] = set()
        for waiter in waiters:
            if waiter.deadline <= now:
                queue_model.end_waiter(waiter.id, WaiterState.TIMED_OUT, now)
                continue
            request = AcquireRequest(decode_requirements(waiter.requirements), holder=waiter.holder)
            try:
                needs, _ = self.granter.check(request)
            except BrokerError:  # its kind or field left the configuration
                queue_model.end_waiter(waiter.id, WaiterState.CANCELLED, now)
                continue
            ownable_kinds = {need.kind.name for need in needs if need.kind.ownable}
            if not ownable_kinds & free_kinds:
                continue  # nothing it needs is free: no grant, nothing to reserve
            plan = self.granter.plan(needs, waiter.holder, now, excluded=reserved)
            if plan.matching.complete:
                self.granter.commit(
                    plan,
                    lease_id=waiter.lease_id,
                    ttl=waiter.ttl,
                    holder=waiter.holder,
                    now=now,
                    request_id=waiter.request_id or "",
                    session_id=waiter.session_id or "",
                )
                queue_model.end_waiter(waiter.id, WaiterState.GRANTED, now)
                self.granted.append(waiter.id)
                continue
            claimed = plan.assigned_ownable()
            reserved.update(claimed)
            queue_model.reserve(claimed, waiter.id, waiter.priority)
            if plan.blocked_index != waiter.blocked_index:
                queue_model.set_blocked(waiter.id, plan.blocked_index)
