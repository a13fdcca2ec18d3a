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
Nothing is held while waiting, so waiting cannot deadlock. A request whose
principal would pass its quota (`broker.domain.quotas`) is skipped, and
reserves nothing, until its principal's releases make room.

Every function runs inside the caller's write transaction; the requests
granted are collected in `granted` (waiter id -> grant) for the caller to
announce after its commit. On PostgreSQL enqueueing needs the request's
kinds locked exclusively and a pass needs the lock of everything
(`broker.models.locks`): the pass walks the whole queue.
"""

from __future__ import annotations

import json
import threading

from broker.domain import events
from broker.domain.errors import BrokerError
from broker.domain.granting import (
    Granter,
    Need,
    Plan,
    decode_requirements,
    encode_requirements,
)
from broker.domain.quotas import Quotas
from broker.domain.replay import Replay
from broker.domain.values import AcquireRequest, EventType, Granted, WaiterState
from broker.models import locks
from broker.models import queue as queue_model
from broker.models import resource as resource_model


class WaitQueue:
    """The queue's rules; storage is `broker.models.queue`."""

    def __init__(self, granter: Granter, quotas: Quotas):
        self.granter = granter
        self.quotas = quotas
        self._local = threading.local()

    @property
    def granted(self) -> dict[int, Granted]:
        """The grants made by this thread's transaction: each worker thread
        runs its own transaction, so each collects its own."""
        if not hasattr(self._local, "granted"):
            self._local.granted = {}
        return self._local.granted

    def enqueue(
        self,
        request: AcquireRequest,
        replay: Replay | None,
        ttl: float,
        lease_id: str,
        now: float,
        deadline: float,
        plan: Plan | None,
    ) -> int:
        """Puts a request in the queue; returns its id. `plan` is its best
        partial assignment against the current reservations: a newcomer that
        ranks last simply reserves it, one that outranks others makes the
        reservations anew in a full pass. No plan: it waits for its quota
        and reserves nothing."""
        locks.require(locks.Level.QUEUE, {r.kind for r in request.requirements}, "enqueueing")
        outranked = queue_model.lowest_waiting_priority(WaiterState.WAITING)
        waiter_id = queue_model.insert_waiter(
            {
                "request_key": replay.key if replay else None,
                "request_digest": replay.digest if replay else None,
                "lease_id": lease_id,
                "holder": request.holder,
                "principal": request.who,
                "priority": request.priority,
                "requirements": encode_requirements(request.requirements),
                "ttl": ttl,
                "session_id": request.session_id or None,
                "state": int(WaiterState.WAITING),
                "enqueue_time": now,
                "deadline": deadline,
                "blocked_index": 0 if plan is None else plan.blocked_index,
                "groups": None if request.groups is None else json.dumps(list(request.groups)),
            }
        )
        if outranked is not None and request.priority > outranked:
            self.dispatch(now)
        elif plan is not None:
            queue_model.reserve(plan.assigned_ownable(), waiter_id, request.priority)
        return waiter_id

    def dispatch(self, now: float) -> None:
        """One pass over the waiting requests in order: grant whoever can be
        served in full, reserve for the others."""
        locks.require(locks.Level.EVERYTHING, why="a queue pass")
        resource_model.clear_passed_delays(now)
        self._end_reservations(now)
        waiters = queue_model.waiting(WaiterState.WAITING)
        queue_model.clear_reservations()
        if not waiters:
            return
        free = queue_model.free_counts_by_kind(now)
        # Identical requests fare alike, unless a resource is reserved for a
        # holder: then who asks matters too.
        per_holder = resource_model.any_restricted()
        reserved: set[int] = set()
        needs_of: dict[str, list[Need] | None] = {}
        fruitless: set[tuple[str, tuple[str, tuple[str, ...] | None] | str]] = set()
        held: dict[str, int] = {}  # resources held by principals with a quota
        for waiter in waiters:
            if waiter.deadline <= now:
                queue_model.end_waiter(waiter.id, WaiterState.TIMED_OUT, now)
                continue
            needs = self._needs(waiter, needs_of)
            if needs is None:  # its kind or field left the configuration
                queue_model.end_waiter(waiter.id, WaiterState.CANCELLED, now)
                continue
            ownable = [need for need in needs if need.kind.ownable]
            who = waiter.principal or waiter.holder
            groups = queue_model.groups_of(waiter)
            key = (waiter.requirements, (who, groups) if per_holder else "")
            if key in fruitless or (ownable and not any(free.get(n.kind.name) for n in ownable)):
                continue  # nothing it could use is free: no grant, nothing to reserve
            size = sum(need.count for need in needs)
            standing = self.quotas.standing(who, size, held)
            if standing is not None and size > standing.limit:  # the quota shrank
                queue_model.end_waiter(waiter.id, WaiterState.CANCELLED, now)
                continue
            if standing is not None and standing.over:
                continue  # it waits for its principal's releases, reserving nothing
            plan = self.granter.plan(needs, who, now, excluded=reserved, groups=groups)
            if plan.matching.complete:
                self.granted[waiter.id] = self.granter.commit(
                    plan,
                    lease_id=waiter.lease_id,
                    ttl=waiter.ttl,
                    holder=waiter.holder,
                    principal=who,
                    now=now,
                    replay=(
                        Replay(waiter.request_key, waiter.request_digest)
                        if waiter.request_key and waiter.request_digest is not None
                        else None
                    ),
                    session_id=waiter.session_id or "",
                    waited=now - waiter.enqueue_time,
                )
                queue_model.end_waiter(waiter.id, WaiterState.GRANTED, now, keep_request_key=True)
                if who in held:
                    held[who] += size
                taken = plan.assigned_ownable()
            else:
                taken = plan.assigned_ownable()
                reserved.update(taken)
                queue_model.reserve(taken, waiter.id, waiter.priority)
                if not taken:
                    fruitless.add(key)
                if plan.blocked_index != waiter.blocked_index:
                    queue_model.set_blocked(waiter.id, plan.blocked_index)
            for resource_id in taken:
                kind = plan.by_id[resource_id].kind
                free[kind] = free.get(kind, 0) - 1

    def _end_reservations(self, now: float) -> None:
        """Ends the reservations whose time is up, recording each."""
        ended = resource_model.end_passed_reservations(now)
        events.record(
            *(
                events.event(
                    EventType.RESOURCE_UNRESERVED,
                    now,
                    resource=name,
                    kind=kind,
                    reason="its reservation ended",
                    detail={"reserved_for": reserved_for},
                )
                for name, kind, reserved_for in ended
            )
        )

    def _needs(self, waiter, cache: dict[str, list[Need] | None]) -> list[Need] | None:
        """A waiter's checked requirements, once per distinct request in a pass."""
        if waiter.requirements not in cache:
            request = AcquireRequest(decode_requirements(waiter.requirements))
            try:
                cache[waiter.requirements] = self.granter.check(request)[0]
            except BrokerError:
                cache[waiter.requirements] = None
        return cache[waiter.requirements]
