"""Leasing: acquiring (at once or after waiting in the queue), renewing,
releasing, revoking and expiring leases.

Each operation is one write transaction. Expired leases are freed at the start
of every acquire, so a lease whose TTL ran out never blocks anyone, however
late the periodic sweep comes. Whatever frees resources runs a queue pass in
the same transaction, so a waiting request is granted in the commit that
freed what it needs; the ids of requests so granted are announced through
`on_granted` after the commit, and a commit that changed the waiting
requests (one came, left, was granted or timed out) through
`on_queue_changed`, for the waiting calls' places in the queue. Outcomes
that must keep what the transaction did (an expiry found on the way) are
returned from the transaction and raised after it commits. How a lease or
a session ends, and what that frees, is `broker.domain.endings`'.

On PostgreSQL each transaction locks the kinds it touches
(`broker.models.locks`): an acquire its request's kinds, a release its
lease's, a renewal only the lease's row. Whatever finds it needs more (an
acquire that must wait, a release that meets a waiter) or loses a race runs
again from the start (`broker.domain.races`), unseen by its caller.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence

from broker.domain import events, paging, planning, races, refusals
from broker.domain.endings import ENDED, Endings, grant_events, kinds_of
from broker.domain.errors import (
    BrokerError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionViolation,
    ResourceBusyError,
    clip,
)
from broker.domain.granting import Granter, capped, hash_secret, lease_view, principal_of
from broker.domain.inventory import visible
from broker.domain.kinds import KindRegistry
from broker.domain.queue import WaitQueue
from broker.domain.quotas import Quotas
from broker.domain.replay import Replay
from broker.domain.requests import Requests, decode_requirements
from broker.domain.values import (
    AcquireRequest,
    EventType,
    Granted,
    GrantView,
    LeaseState,
    LeaseView,
    Page,
    SessionState,
    SetupReport,
    WaiterState,
    WaiterView,
    Waiting,
)
from broker.domain.views import from_snapshot
from broker.models import lease as lease_model
from broker.models import locks
from broker.models import notify as notify_model
from broker.models import queue as queue_model
from broker.models import resource as resource_model
from broker.models import session as session_model
from broker.models.database import database_proxy
from broker.models.transactions import after_commit, write_transaction, writes

MAX_REASON = 1024
MAX_REQUEST_ID = 128
# The most resources one `ReleaseResources` names: a lease holds at most 64.
MAX_GIVEN_BACK = 64
MIN_PRIORITY, MAX_PRIORITY = -100, 100


class Leases:
    """Who holds what: semantics 1 to 6 of the design."""

    def __init__(
        self,
        kinds: KindRegistry,
        *,
        default_ttl: float,
        max_ttl: float,
        max_wait: float = 3600.0,
        max_lifetime: float = 0.0,
        quotas: Quotas | None = None,
        quarantine_after: int = 0,
        clock: Callable[[], float] = time.time,
        on_granted: Callable[[dict[int, Granted]], None] = lambda granted: None,
        on_queue_changed: Callable[[], None] = lambda: None,
    ):
        self.kinds = kinds
        self.requests = Requests(kinds, default_ttl, max_ttl)
        self.granter = Granter(kinds, max_lifetime)
        locks.relate(
            {kind.name: frozenset(kinds.family([kind.name])) for kind in kinds if kind.tree}
        )
        self.quotas = quotas or Quotas()
        self.queue = WaitQueue(self.requests, self.granter, self.quotas)
        self.endings = Endings(kinds, self.queue)
        self.max_wait = max_wait
        self.quarantine_after = quarantine_after
        self.clock = clock
        self.on_granted = on_granted
        self.on_queue_changed = on_queue_changed

    @contextlib.contextmanager
    def transaction(
        self, kinds: Collection[str] | None = None, queue: bool = False
    ) -> Iterator[float]:
        """A write transaction that announces, once committed, the waiting
        requests it granted, and whether it changed the queue. It gives the
        time of its decisions, read once its locks are held, so recorded
        times follow the order in which transactions decide (and fencing
        numbers grow). Its locks are those of the `kinds` it touches
        (`write_transaction`; None: everything)."""
        try:
            with write_transaction(kinds=kinds, queue=queue):
                self.queue.begin()
                now = self.clock()
                yield now
                # Whatever the transaction freed is offered to those waiting.
                self.queue.dispatch(now)
                granted = dict(self.queue.granted)
                if granted:
                    notify_model.announce_grants(list(granted))
                    after_commit(f"granted {min(granted)}", lambda: self.on_granted(granted))
                if queue_model.changing():
                    after_commit("queue changed", self.on_queue_changed)
        finally:
            self.queue.begin()

    # ------------------------------------------------------------- acquire

    @writes
    def acquire(self, request: AcquireRequest) -> Granted | Waiting:
        """Grants every requirement at once with distinct resources; or, if
        they are held now and the request may wait, queues it (`Waiting`);
        or raises: FAILED_PRECONDITION if no state of the inventory could
        ever serve it (or it is bigger than its principal's quota),
        RESOURCE_EXHAUSTED if it is held now, or would pass the quota now,
        and may not wait. A request id seen before returns that request's
        lease or wait."""
        needs, ttl = self.requests.check(request)
        self._check_waiting(request)
        never = self.quotas.never(request.who, sum(need.count for need in needs))
        if never is not None:
            raise never
        outcome = self._acquire_once(request, needs, ttl)
        if isinstance(outcome, BrokerError):
            raise outcome
        return outcome

    @races.retried
    def _acquire_once(self, request: AcquireRequest, needs, ttl: float):
        with self.transaction(kinds={need.kind.name for need in needs}) as now:
            # Waiting requests come before a newcomer to whatever came free
            # since the last pass: leases found expired, lock-delays or
            # reservations that ended.
            leases_due, passed = resource_model.due(LeaseState.ACTIVE, now)
            if leases_due:
                self.endings.expire_due(now)
            if passed:
                self.queue.tick(now)
            self.queue.dispatch(now)
            return self._acquire(request, needs, ttl, now)

    def _check_waiting(self, request: AcquireRequest) -> None:
        if request.max_wait < 0:
            raise InvalidArgumentError.of("max_wait", "must not be negative")
        if not MIN_PRIORITY <= request.priority <= MAX_PRIORITY:
            raise InvalidArgumentError.of(
                "priority", f"must be {MIN_PRIORITY} to {MAX_PRIORITY}, not {request.priority}"
            )
        if len(request.request_id) > MAX_REQUEST_ID:
            raise InvalidArgumentError.of(
                "request_id", f"is longer than {MAX_REQUEST_ID} characters"
            )

    def _acquire(self, request: AcquireRequest, needs, ttl: float, now: float):
        replay = self.granter.replay_of(request, ttl)
        if replay is not None:
            earlier = self._earlier(replay, now)
            if earlier is not None:
                return earlier
        if request.session_id:
            session = session_model.Session.get_or_none(
                session_model.Session.id == request.session_id
            )
            if session is None or session.state != SessionState.OPEN:
                return FailedPreconditionError(
                    PreconditionViolation(
                        "SESSION_ENDED",
                        f"sessions/{clip(request.session_id)}",
                        f"session {clip(request.session_id)} is not open",
                    )
                )
            if request.verified and session.holder != request.principal:
                return PermissionDeniedError(
                    f"session {clip(request.session_id)} is not {clip(request.principal)}'s: "
                    "a lease may be bound only to a session of the principal acquiring it",
                    "NOT_SESSION_OWNER",
                )
        plan = planning.plan(
            needs, request.who, now, rank=(request.priority, None), groups=request.groups
        )
        standing = self.quotas.standing(request.who, sum(need.count for need in needs))
        over = standing is not None and standing.over
        lease_id = str(uuid.uuid4())
        if plan.matching.complete and not over:
            # Resources it takes that lower priorities had reserved: those
            # requests plan again.
            self.queue.rob(plan.by_id[resource_id] for resource_id in plan.assigned_ownable())
            return self.granter.commit(
                plan,
                lease_id=lease_id,
                ttl=ttl,
                holder=request.holder,
                principal=request.who,
                # Read after the candidates: a resource freed by a release
                # that ran alongside is granted after that release's time.
                now=self.clock(),
                replay=replay,
                session_id=request.session_id,
                behind_priority=request.priority,
            )
        kinds = {need.kind.name for need in needs}
        locks.require(locks.Level.QUEUE, kinds, "a refusal or a wait is decided after the grants")
        # Not granted now: busy, over the quota, or both; "never" beats both.
        refusal = (
            None
            if plan.matching.complete
            else refusals.refusal(needs, request.who, plan, now, request.groups)
        )
        if refusal is not None and not isinstance(refusal, ResourceBusyError):
            return refusal
        if request.max_wait <= 0:
            return standing.exceeded() if standing is not None and over else refusal
        deadline = now + min(request.max_wait, self.max_wait)
        # A request over its quota waits for its principal's releases and
        # reserves nothing: it holds up no other principal.
        waiter_id = self.queue.enqueue(
            request, replay, ttl, lease_id, now, deadline, None if over else plan
        )
        waiter = queue_model.get_waiter(waiter_id)
        assert waiter is not None, "enqueued in this transaction"
        return self._waiting(waiter, now)

    def _earlier(self, replay: Replay, now: float) -> Granted | Waiting | BrokerError | None:
        """The outcome of the earlier request with this request id, if there
        was one: its lease while active, its place in the queue while it
        waits; an error if the request is not the same, or its lease ended."""
        lease = lease_model.lease_by_request_key(replay.key)
        if lease is not None:
            mismatch = replay.check(lease.request_digest)
            if mismatch is not None:
                return mismatch
            if lease.state != LeaseState.ACTIVE:
                code, text = ENDED[LeaseState(lease.state)]
                return FailedPreconditionError(
                    PreconditionViolation(
                        code,
                        f"leases/{lease.id}",
                        f"the request with this request_id was granted lease {lease.id}, "
                        f"which {text} ({lease.end_reason}); it holds nothing now",
                    )
                )
            return Granted(self._views([lease])[0], self.granter.secret_for(lease.id))
        waiter = queue_model.waiter_by_request_key(replay.key)
        if waiter is not None and waiter.state == WaiterState.WAITING:
            return replay.check(waiter.request_digest) or self._waiting(waiter, now)
        return None

    # ------------------------------------------------------------- waiting

    def wait_positions(self, waiter_ids: builtins.list[int]) -> dict[int, int]:
        """The place in the queue of each of `waiter_ids` still waiting (the
        others are left out), read at once for all of them."""
        return queue_model.positions(waiter_ids, WaiterState.WAITING)

    def wait_status(self, waiter_id: int, position: int | None = None) -> Granted | Waiting:
        """Where a waiting request stands: granted (with its secret), or
        still waiting (at `position`, if it was just read with
        `wait_positions`); DEADLINE_EXCEEDED once its wait ended ungranted."""
        now = self.clock()
        waiter = queue_model.get_waiter(waiter_id)
        if waiter is None:
            raise NotFoundError("waiter", str(waiter_id))
        if waiter.state == WaiterState.GRANTED:
            return Granted(self.get(waiter.lease_id), self.granter.secret_for(waiter.lease_id))
        if waiter.state == WaiterState.WAITING and waiter.deadline > now:
            return self._waiting(waiter, now, position)
        if waiter.state == WaiterState.CANCELLED:
            raise FailedPreconditionError(
                PreconditionViolation(
                    "WAIT_CANCELLED",
                    f"waiters/{waiter_id}",
                    "the request left the queue: its session ended, its kind or "
                    "field is no longer served, or it asks for more than its principal's "
                    "quota; it holds nothing",
                )
            )
        raise DeadlineExceededError(
            f"the request waited until its deadline and holds nothing (waiter {waiter_id})"
        )

    def _waiting(
        self, waiter: queue_model.Waiter, now: float, position: int | None = None
    ) -> Waiting:
        request = AcquireRequest(decode_requirements(waiter.requirements), holder=waiter.holder)
        needs, _ = self.requests.check(request)
        who = waiter.principal or waiter.holder
        if position is None:
            position = queue_model.position(waiter, WaiterState.WAITING)
        standing = self.quotas.standing(who, sum(need.count for need in needs))
        if standing is not None and standing.over:
            return Waiting(waiter.id, position, None, waiter.deadline, quota=standing.text())
        blocked = refusals.blocked(
            needs, who, waiter.blocked_index, now, queue_model.groups_of(waiter)
        )
        return Waiting(waiter.id, position, blocked, waiter.deadline)

    @writes
    def abandon(self, waiter_id: int, timed_out: bool) -> Granted | None:
        """The waiting caller is gone (`timed_out` False) or its wait ended:
        the request leaves the queue. If it was granted meanwhile, a timed
        out caller still gets the grant; a vanished one's lease is released."""
        with self.transaction() as now:
            waiter = queue_model.get_waiter(waiter_id)
            if waiter is None:
                raise NotFoundError("waiter", str(waiter_id))
            if waiter.state == WaiterState.WAITING:
                state = WaiterState.TIMED_OUT if timed_out else WaiterState.CANCELLED
                queue_model.end_waiter(waiter_id, state, now)
                self.queue.leave([waiter_id])
                return None
            if waiter.state != WaiterState.GRANTED:
                return None
            if timed_out:
                return Granted(self.get(waiter.lease_id), self.granter.secret_for(waiter.lease_id))
            locked = lease_model.lock_lease(waiter.lease_id)
            if locked is not None and locked[0].state == LeaseState.ACTIVE:
                lease, grants = locked
                self.endings.end(
                    lease, grants, LeaseState.RELEASED, now, "its caller left before the grant", ""
                )
            return None

    def list_waiters(self, page_size: int, page_token: str) -> Page[WaiterView]:
        size = paging.page_size(page_size)
        position = paging.decode_token(page_token, ("priority", "id", "position"))
        after = None
        first = 0
        if position is not None:
            if not all(isinstance(position[k], int) for k in ("priority", "id", "position")):
                raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
            after, first = (position["priority"], position["id"]), position["position"]
        rows = queue_model.list_waiters(WaiterState.WAITING, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        views = tuple(
            WaiterView(
                waiter_id=row.id,
                holder=row.holder,
                principal=row.principal or row.holder,
                priority=row.priority,
                requirements=decode_requirements(row.requirements),
                position=first + offset,
                blocked_requirement_index=row.blocked_index,
                enqueue_time=row.enqueue_time,
                deadline=row.deadline,
            )
            for offset, row in enumerate(rows)
        )
        token = ""
        if more:
            last = rows[-1]
            token = paging.encode_token(
                {"priority": last.priority, "id": last.id, "position": first + len(rows)}
            )
        return Page(views, token)

    @writes
    def dispatch(self, name: str = "") -> None:
        """A queue pass after resource `name` was created or changed (made
        usable or not, reserved, unreserved, moved to another group): it is
        offered to the requests that could use it, among them any that
        reserved it, which plan again. Without a name: a full pass over the
        whole queue."""
        with self.transaction() as now:
            if not name:
                self.queue.replan(now)
                return
            self.queue.offer(resource_model.within_reach(name))

    # ------------------------------------------------ renew, release, revoke

    @writes
    def renew(self, lease_id: str, secret: str, principal: str | None = None) -> LeaseView:
        """Extends an active lease by its TTL from now, but not past its
        maximum lifetime: a renewal stops there, and once the lease is there
        renewing is FAILED_PRECONDITION (only a new lease goes on).
        `principal`, when given (authentication on), must be the lease's own."""

        def extend(lease: lease_model.Lease, grants: list, now: float) -> None:
            cap = lease.max_expire_time
            if cap is not None and lease.expire_time >= cap:
                raise FailedPreconditionError(
                    PreconditionViolation(
                        "MAX_LIFETIME",
                        f"leases/{lease.id}",
                        f"lease {lease.id}: the lease reached its maximum lifetime of "
                        f"{cap - lease.create_time:g} s (leases.max_lifetime); release it "
                        "and acquire again",
                    )
                )
            lease.expire_time = capped(now + lease.ttl, cap)
            lease_model.extend_lease(lease.id, lease.expire_time)
            events.record(
                *grant_events(
                    EventType.LEASE_RENEWED,
                    lease,
                    lease_model.held(grants),
                    now,
                    principal_of(lease),
                )
            )

        return self._change(lease_id, secret, extend, principal)

    @writes
    def release(self, lease_id: str, secret: str, principal: str | None = None) -> LeaseView:
        """Ends a lease at its holder's request and frees its resources;
        `principal` as for `renew`."""

        def end(lease: lease_model.Lease, grants: list, now: float) -> None:
            actor = principal_of(lease)
            self.endings.end(
                lease, grants, LeaseState.RELEASED, now, "released by its holder", actor
            )

        return self._change(lease_id, secret, end, principal, frees=True)

    @writes
    def release_resources(
        self, lease_id: str, secret: str, names: Sequence[str], principal: str | None = None
    ) -> LeaseView:
        """Gives back some of a lease's resources and keeps the rest
        (`principal` as for `renew`); naming all it still holds releases it."""
        if not names:
            raise InvalidArgumentError.of("resources", "name at least one resource to give back")
        if len(names) > MAX_GIVEN_BACK:
            raise InvalidArgumentError.of(
                "resources", f"at most {MAX_GIVEN_BACK} names, not {len(names)}"
            )
        for index, name in enumerate(names):
            if not name:
                raise InvalidArgumentError.of(f"resources[{index}]", "is empty")
            if name in names[:index]:
                raise InvalidArgumentError.of(
                    f"resources[{index}]", f"{clip(name)!r} is named twice"
                )

        def give_back(lease: lease_model.Lease, grants: list, now: float) -> None:
            held = {grant.resource_name: grant for grant in lease_model.held(grants)}
            missing = [name for name in names if name not in held]
            if missing:
                raise FailedPreconditionError(
                    PreconditionViolation(
                        "NOT_IN_LEASE",
                        f"resources/{clip(missing[0])}",
                        f"lease {lease.id} does not hold {clip(missing[0])!r}"
                        + (f" (it holds: {', '.join(held)})" if held else ""),
                    )
                )
            alone = [name for name in names if held[name].parent]
            if alone:
                parent = held[alone[0]].parent
                raise FailedPreconditionError(
                    PreconditionViolation(
                        "SUB_RESOURCE",
                        f"resources/{clip(alone[0])}",
                        f"{clip(alone[0])!r} was granted as a sub-resource of {parent!r}: "
                        f"give back {parent!r}, and it goes with it",
                    )
                )
            # A resource goes back with its sub-resources.
            given = [g for g in held.values() if g.resource_name in names or g.parent in names]
            actor = principal_of(lease)
            if len(given) == len(held):
                self.endings.end(
                    lease, grants, LeaseState.RELEASED, now, "released by its holder", actor
                )
            else:
                self.endings.give_back(lease, given, now, actor)

        return self._change(lease_id, secret, give_back, principal, frees=True)

    @writes
    def report_setup(
        self,
        lease_id: str,
        secret: str,
        resource: str,
        ok: bool,
        error: str = "",
        principal: str | None = None,
    ) -> SetupReport:
        """Counts how the setup of one of an active lease's resources went,
        as its holder reports it (`principal` as for `renew`): after
        `quarantine_after` failures in a row (0: never) the resource is
        quarantined, out of service with the failure as its reason."""
        if not resource:
            raise InvalidArgumentError.of("resource", "is required")
        if len(error) > MAX_REASON:
            raise InvalidArgumentError.of("error", f"is longer than {MAX_REASON} characters")
        outcome: list[SetupReport] = []

        def count(lease: lease_model.Lease, grants: list, now: float) -> None:
            grant = next((g for g in lease_model.held(grants) if g.resource_name == resource), None)
            if grant is None or grant.resource_id is None:
                raise FailedPreconditionError(
                    PreconditionViolation(
                        "NOT_IN_LEASE",
                        f"resources/{clip(resource)}",
                        f"lease {lease.id} does not hold {clip(resource)!r}: report only on "
                        "the lease's own resources",
                    )
                )
            failures = resource_model.count_setup(grant.resource_id, ok)
            quarantined = bool(ok is False and self.quarantine_after) and (
                failures == self.quarantine_after
            )
            if quarantined:
                reason = (
                    f"quarantined after {failures} failed setups in a row; the last: "
                    f"{error or 'no error given'}"
                )
                resource_model.take_out_of_service(grant.resource_id, reason, now)
                events.record(
                    events.event(
                        EventType.RESOURCE_QUARANTINED,
                        now,
                        resource=resource,
                        kind=json.loads(grant.snapshot)["kind"],
                        lease_id=lease.id,
                        actor=principal_of(lease),
                        reason=reason,
                        detail={"failures": failures},
                    )
                )
            outcome.append(SetupReport(failures, quarantined))

        self._change(lease_id, secret, count, principal)
        return outcome[0]

    @writes
    def revoke(self, lease_id: str, reason: str, actor: str = "") -> LeaseView:
        """Ends someone's lease, recording why."""
        if not reason.strip():
            raise InvalidArgumentError.of("reason", "is required: say why the lease is revoked")
        if len(reason) > MAX_REASON:
            raise InvalidArgumentError.of("reason", f"is longer than {MAX_REASON} characters")

        def end(lease: lease_model.Lease, grants: list, now: float) -> None:
            self.endings.end(lease, grants, LeaseState.REVOKED, now, reason, actor)

        return self._change(lease_id, None, end, frees=True)

    def _change(
        self,
        lease_id: str,
        secret: str | None,
        change,
        principal: str | None = None,
        frees: bool = False,
    ) -> LeaseView:
        """Applies `change` to an active lease after checking the secret
        (None: no secret needed) and, if given, that `principal` holds it:
        a secret that leaked is of no use to another principal. A lease
        found past its TTL is expired and committed first, then reported.
        A change that `frees` the lease's resources locks their kinds."""
        if not lease_id:
            raise InvalidArgumentError.of("lease_id", "is required")
        return self._change_once(lease_id, secret, change, principal, frees)

    @races.retried
    def _change_once(
        self, lease_id: str, secret: str | None, change, principal: str | None, frees: bool
    ) -> LeaseView:
        # A lease's grants only ever shrink: read before the transaction,
        # they say which kinds it locks, exclusively if its release will
        # serve a waiting request.
        kinds: Collection[str] = ()
        wanted = False
        if frees and locks.by_kind(database_proxy.obj):
            granted, wanted = lease_model.grants_wanted(lease_id)
            kinds = kinds_of(granted)
        with self.transaction(kinds=kinds, queue=wanted) as now:
            locked = lease_model.lock_lease(lease_id)
            if locked is None:
                raise NotFoundError("lease", lease_id)
            lease, held = locked
            if secret is not None:
                if not secret:
                    raise PermissionDeniedError(
                        f"lease {lease_id} needs its secret for this call", "NO_SECRET"
                    )
                if not hmac.compare_digest(hash_secret(secret), lease.secret_hash):
                    raise PermissionDeniedError(
                        f"the secret given is not lease {lease_id}'s: only its holder may act on it"
                    )
            if principal is not None and principal != principal_of(lease):
                raise PermissionDeniedError(
                    f"lease {lease_id} is held by another principal: only its holder may act "
                    "on it, even with its secret"
                )
            grants = {lease.id: held}
            if lease.state == LeaseState.ACTIVE and lease.expire_time <= now:
                self.endings.end(
                    lease, grants[lease.id], LeaseState.EXPIRED, now, "its TTL ran out", ""
                )
            if lease.state != LeaseState.ACTIVE:
                code, text = ENDED[LeaseState(lease.state)]
                outcome: BrokerError | None = FailedPreconditionError(
                    PreconditionViolation(code, f"leases/{lease_id}", f"lease {lease_id} {text}")
                )
            else:
                change(lease, grants[lease.id], now)
                outcome = None
            view = self._views([lease], grants)[0]
        if outcome is not None:
            raise outcome
        return view

    # ----------------------------------------------------------------- expiry

    @races.retried
    @writes
    def expire_due(self) -> int:
        """Frees every lease whose TTL has run out and every session whose
        keep-alives stopped, then ends what time ended (waits, lock-delays,
        reservations); returns how many leases ended. It locks the kinds of
        the leases it ends, and everything only for a session to end or
        something time ended: with nothing to do, nothing but the rows it
        reads."""
        with self.transaction(kinds=()) as now:
            orphaned = session_model.orphaned_sessions(SessionState.OPEN, now)
            if orphaned:
                locks.require(locks.Level.EVERYTHING, why="ending sessions")
            expired = self.endings.expire_due(now)
            for session in orphaned:
                self.endings.orphan_session(session, now)
            self.queue.tick(now)
        return expired

    # ------------------------------------------------------------------ reads

    def get(self, lease_id: str, groups: tuple[str, ...] | None = None) -> LeaseView:
        """One lease; its grants of resources outside `groups` (None: every
        group) are left out."""
        if not lease_id:
            raise InvalidArgumentError.of("lease_id", "is required")
        lease = lease_model.leases_by_id([lease_id]).get(lease_id)
        if lease is None:
            raise NotFoundError("lease", lease_id)
        views = self._views([lease], groups=groups)
        if not views:
            raise NotFoundError("lease", lease_id)
        return views[0]

    def list(
        self,
        state: LeaseState | None,
        holder: str,
        resource: str,
        page_size: int,
        page_token: str,
        principal: str = "",
        groups: tuple[str, ...] | None = None,
    ) -> Page[LeaseView]:
        size = paging.page_size(page_size)
        position = paging.decode_token(page_token, ("time", "id"))
        before = None
        if position is not None:
            if not isinstance(position["time"], int | float) or not isinstance(position["id"], str):
                raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
            before = (float(position["time"]), position["id"])
        rows = lease_model.list_leases(
            None if state is None else int(state), holder, resource, before, size + 1, principal
        )
        more = len(rows) > size
        rows = rows[:size]
        token = (
            paging.encode_token({"time": rows[-1].create_time, "id": rows[-1].id}) if more else ""
        )
        return Page(tuple(self._views(rows, groups=groups)), token)

    def _views(
        self,
        leases: builtins.list[lease_model.Lease],
        grants: dict[str, builtins.list[lease_model.LeaseGrant]] | None = None,
        groups: tuple[str, ...] | None = None,
    ) -> builtins.list[LeaseView]:
        """Views of leases; `grants` may bring their grants, already read.
        Grants of resources outside `groups` (None: every group) are left
        out, and so are leases of such resources only: to such a reader
        those resources do not exist."""
        if grants is None:
            grants = lease_model.grants_of([lease.id for lease in leases])
        views = []
        for lease in leases:
            grant_views = []
            for grant in grants[lease.id]:
                view = from_snapshot(grant.resource_name, grant.snapshot, grant.fencing_token)
                if not visible(view.group, groups):
                    continue
                if lease.state == LeaseState.ACTIVE and grant.release_time is None:
                    kind = self.kinds.find(view.kind)
                    owner = principal_of(lease) if kind is None or kind.ownable else ""
                    view = dataclasses.replace(view, owner=owner, lease_ids=(lease.id,))
                grant_views.append(
                    GrantView(
                        grant.requirement_index,
                        grant.label,
                        view,
                        grant.fencing_token,
                        grant.release_time,
                        grant.parent,
                    )
                )
            if grant_views or not grants[lease.id]:
                views.append(lease_view(lease, grant_views))
        return views
