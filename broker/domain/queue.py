"""The wait queue: requests whose resources are held now wait here, in the
database, and are granted by whichever call frees what they need.

Order and fairness. Waiting requests are served by priority, then arrival.
Each waiting request reserves the free resources its best partial
assignment uses, and no request behind it may take those. So a later
request is granted before an earlier one only with resources the earlier
one does not need; an earlier request is never overtaken on a resource it
needs, and a request for three resources gets them as they come free,
however many single requests arrive after it. Nothing is held while
waiting, so waiting cannot deadlock. A request whose principal would pass
its quota (`broker.domain.quotas`) reserves nothing until its principal's
releases make room.

Cost. A pass looks only at the requests the change could serve: each
waiting request is indexed by the kinds (and names, where it names
resources) it could use, so a resource that comes free is offered, in
serving order, to the requests with a matching key, and the pass ends once
nobody took or let go of anything more. A request that takes a resource
reserved by one behind it (it ranks ahead) sends that one through the pass
too, as do the waiting requests of a principal with a quota who released
something. Releasing a resource nobody waits for costs nothing here,
however long the queue.

Every function runs inside the caller's write transaction; the requests
granted are collected in `granted` (waiter id -> grant) for the caller to
announce after its commit, and the resources that came within reach in
`offer` until the transaction's pass (`dispatch`). On PostgreSQL serving a
waiting request, or enqueueing one, needs its kinds locked exclusively,
and whatever time ended the lock of everything (`broker.models.locks`).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import threading

from broker.domain import events, planning
from broker.domain.errors import BrokerError
from broker.domain.granting import Granter
from broker.domain.planning import Plan
from broker.domain.quotas import Quotas
from broker.domain.replay import Replay
from broker.domain.requests import Need, Requests, decode_requirements, encode_requirements
from broker.domain.values import AcquireRequest, EventType, Granted, WaiterState
from broker.models import locks
from broker.models import queue as queue_model
from broker.models import resource as resource_model
from broker.models.queue import Freed, Rank, Waiter


def _order(rank: Rank) -> tuple[int, int]:
    """A rank as a sort key: the request served first sorts first."""
    priority, waiter_id = rank
    return -priority, waiter_id


@dataclasses.dataclass
class _Pending:
    """What this thread's transaction changed that the queue must look at."""

    offered: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)
    robbed: dict[int, int] = dataclasses.field(default_factory=dict)  # waiter id -> priority
    principals: set[str] = dataclasses.field(default_factory=set)
    granted: dict[int, Granted] = dataclasses.field(default_factory=dict)

    def offer(self, freed: list[Freed]) -> None:
        for resource_id, kind, name, wanted in freed:
            if wanted:
                self.offered[resource_id] = (kind, name)

    def __bool__(self) -> bool:
        return bool(self.offered or self.robbed or self.principals)


class WaitQueue:
    """The queue's rules; storage is `broker.models.queue`."""

    def __init__(self, requests: Requests, granter: Granter, quotas: Quotas):
        self.requests = requests
        self.granter = granter
        self.quotas = quotas
        self._local = threading.local()
        # The kinds with sub-resources, or that are sub-resources.
        self._trees = {kind.name for kind in requests.kinds if kind.tree}

    @property
    def _pending(self) -> _Pending:
        """This thread's transaction's changes: each worker thread runs its
        own transaction, so each collects its own."""
        if not hasattr(self._local, "pending"):
            self._local.pending = _Pending()
        return self._local.pending

    @property
    def granted(self) -> dict[int, Granted]:
        """The grants made by this thread's transaction."""
        return self._pending.granted

    def begin(self) -> None:
        """Forgets what an earlier transaction of this thread collected."""
        self._local.pending = _Pending()

    # ------------------------------------------------------------ changes

    def offer(self, freed: list[Freed]) -> None:
        """Resources that came within reach (a lease ended, a lock-delay or a
        reservation passed, a waiting request let them go): the pass offers
        those a waiting request has a key for. In a tree of sub-resources a
        change of one resource may serve a request for its parent or its
        sub-resources: they are offered too."""
        in_trees = [row[0] for row in freed if row[1] in self._trees]
        if in_trees:
            freed = [*freed, *resource_model.relatives(in_trees)]
        self._pending.offer(freed)

    def released_by(self, principal: str) -> None:
        """`principal` released resources: if it has a quota, its waiting
        requests that were over it may fit now."""
        if self.quotas.limit_of(principal):
            self._pending.principals.add(principal)

    def rob(self, rows) -> None:
        """Resources reserved by waiting requests were taken by one ranking
        ahead (rows as read when planning): those requests plan again."""
        for row in rows:
            if row.reserved_by is not None:
                self._pending.robbed[row.reserved_by] = row.reserved_priority or 0

    def leave(self, waiter_ids: list[int]) -> None:
        """Requests that left the queue let their reservations go."""
        self.offer(queue_model.unreserve(waiter_ids))

    # ------------------------------------------------------------ arrival

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
        partial assignment among the resources not reserved by requests of
        its priority or higher: it reserves what that uses, and a request of
        lower priority it takes a reservation from plans again. No plan: it
        waits for its quota and reserves nothing."""
        locks.require(locks.Level.QUEUE, {r.kind for r in request.requirements}, "enqueueing")
        requirements = encode_requirements(request.requirements)
        waiter_id = queue_model.insert_waiter(
            {
                "request_key": replay.key if replay else None,
                "request_digest": replay.digest if replay else None,
                "lease_id": lease_id,
                "holder": request.holder,
                "principal": request.who,
                "priority": request.priority,
                "requirements": requirements,
                "ttl": ttl,
                "session_id": request.session_id or None,
                "state": int(WaiterState.WAITING),
                "enqueue_time": now,
                "deadline": deadline,
                "blocked_index": 0 if plan is None else plan.blocked_index,
                "groups": None if request.groups is None else json.dumps(list(request.groups)),
            }
        )
        queue_model.insert_needs(waiter_id, request.priority, queue_model.need_keys(requirements))
        if plan is not None:
            taken = plan.assigned_ownable()
            self.rob(plan.by_id[resource_id] for resource_id in taken)
            queue_model.reserve(taken, waiter_id, request.priority)
        return waiter_id

    # ------------------------------------------------------------- passes

    def dispatch(self, now: float) -> None:
        """The pass over what this transaction changed: offers what came
        within reach to the waiting requests that could use it, in order."""
        pending = self._pending
        if not pending:
            return
        run = _Pass(pending)
        for principal in sorted(pending.principals):
            for waiter in queue_model.waiters_of(principal, WaiterState.WAITING):
                run.push(waiter)
        pending.principals.clear()
        self._run(run, now)

    def tick(self, now: float) -> None:
        """Whatever time ended: lock-delays and reservations that passed, and
        waits past their deadline; their resources are offered. Finding
        any, it needs the lock of everything (what it wrote without is
        rolled back)."""
        freed = resource_model.clear_passed_delays(now)
        ended = queue_model.timed_out(WaiterState.WAITING, now)
        if freed or ended:
            locks.require(locks.Level.EVERYTHING, why="time ended")
        self.offer(freed)
        self._end_reservations(now)
        for waiter_id in ended:
            queue_model.end_waiter(waiter_id, WaiterState.TIMED_OUT, now)
        self.leave(ended)

    def replan(self, now: float) -> None:
        """Every waiting request plans anew, in order, from no reservations:
        after the inventory changed (resources created, made usable,
        reserved or unreserved), which may serve any of them."""
        locks.require(locks.Level.EVERYTHING, why="a pass over the whole queue")
        self.tick(now)
        queue_model.clear_reservations()
        run = _Pass(self._pending)
        for waiter in queue_model.waiting(WaiterState.WAITING):
            run.push(waiter)
        self._run(run, now)

    def _run(self, run: _Pass, now: float) -> None:
        after: Rank | None = None
        while True:
            wanting = (
                queue_model.next_wanting(
                    set(run.pending.offered.values()), after, WaiterState.WAITING
                )
                if run.pending.offered
                else None
            )
            waiter = run.pop_before(wanting)
            if waiter is None:
                return
            after = (waiter.priority, waiter.id)
            self._serve(waiter, now, run)

    def _serve(self, waiter: Waiter, now: float, run: _Pass) -> None:
        """Grants `waiter` if it can be served in full; else it reserves its
        best partial assignment, letting go of what it no longer uses."""
        kinds = {requirement.kind for requirement in decode_requirements(waiter.requirements)}
        locks.require(locks.Level.QUEUE, kinds, "serving a waiting request")
        if waiter.deadline <= now:
            self._end(waiter, WaiterState.TIMED_OUT, now)
            return
        needs = self._needs(waiter, run.needs_of)
        if needs is None:  # its kind or field left the configuration
            self._end(waiter, WaiterState.CANCELLED, now)
            return
        who = waiter.principal or waiter.holder
        size = sum(need.count for need in needs)
        standing = self.quotas.standing(who, size, run.held)
        if standing is not None and size > standing.limit:  # the quota shrank
            self._end(waiter, WaiterState.CANCELLED, now)
            return
        if standing is not None and standing.over:
            self.leave([waiter.id])  # it waits for its principal's releases
            return
        plan = planning.plan(
            needs,
            who,
            now,
            rank=(waiter.priority, waiter.id),
            groups=queue_model.groups_of(waiter),
        )
        taken = plan.assigned_ownable()
        self.rob(
            row
            for row in (plan.by_id[resource_id] for resource_id in taken)
            if row.reserved_by != waiter.id
        )
        for resource_id in taken:
            run.pending.offered.pop(resource_id, None)
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
            self.leave([waiter.id])
            if who in run.held:
                run.held[who] += size
            return
        self.offer(queue_model.unreserve([waiter.id], keep=taken))
        queue_model.reserve(
            [rid for rid in taken if plan.by_id[rid].reserved_by != waiter.id],
            waiter.id,
            waiter.priority,
        )
        if plan.blocked_index != waiter.blocked_index:
            queue_model.set_blocked(waiter.id, plan.blocked_index)

    def _end(self, waiter: Waiter, state: WaiterState, now: float) -> None:
        queue_model.end_waiter(waiter.id, state, now)
        self.leave([waiter.id])

    def _end_reservations(self, now: float) -> None:
        """Ends the reservations whose time is up, recording each."""
        ended = resource_model.end_passed_reservations(now)
        if ended:
            locks.require(locks.Level.EVERYTHING, why="a reservation ended")
        self.offer([freed for freed, _ in ended])
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
                for (_, kind, name, _), reserved_for in ended
            )
        )

    def _needs(self, waiter, cache: dict[str, list[Need] | None]) -> list[Need] | None:
        """A waiter's checked requirements, once per distinct request in a pass."""
        if waiter.requirements not in cache:
            request = AcquireRequest(decode_requirements(waiter.requirements))
            try:
                cache[waiter.requirements] = self.requests.check(request)[0]
            except BrokerError:
                cache[waiter.requirements] = None
        return cache[waiter.requirements]


class _Pass:
    """One pass's state: the requests sent through it by rank (robbed of a
    reservation, over a quota that may fit now, or every one), and what
    their plans read once. Requests are served in serving order, each at
    most once: whatever sends one through ranks ahead of it."""

    def __init__(self, pending: _Pending):
        self.pending = pending
        self.needs_of: dict[str, list[Need] | None] = {}
        self.held: dict[str, int] = {}  # resources held by principals with a quota
        self._heap: list[tuple[tuple[int, int], int, Waiter | None]] = []
        self._seen: set[int] = set()
        self._arrivals = itertools.count()

    def push(self, waiter: Waiter | None, rank: Rank | None = None) -> None:
        if waiter is not None:
            rank = (waiter.priority, waiter.id)
        assert rank is not None
        heapq.heappush(self._heap, (_order(rank), next(self._arrivals), waiter))

    def pop_before(self, wanting: Waiter | None) -> Waiter | None:
        """The next request to serve: the first of `wanting` (the next one
        with a key for what is offered) and those sent through the pass."""
        for waiter_id, priority in self.pending.robbed.items():
            if waiter_id not in self._seen:
                self.push(None, (priority, waiter_id))
        self.pending.robbed.clear()
        while self._heap:
            order, _, row = self._heap[0]
            if wanting is not None and _order((wanting.priority, wanting.id)) < order:
                break
            heapq.heappop(self._heap)
            waiter_id = order[1]
            if waiter_id in self._seen:
                continue
            self._seen.add(waiter_id)
            if row is None:
                row = queue_model.get_waiter(waiter_id)
            if row is not None and row.state == WaiterState.WAITING:
                return row
        if wanting is None:
            return None
        self._seen.add(wanting.id)
        return wanting
