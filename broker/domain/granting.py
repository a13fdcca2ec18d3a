"""Granting: checking a request, finding distinct resources for all of it,
and recording the grant. Shared by a direct acquire and by the queue, which
grants waiting requests as resources come free.

All functions run inside the caller's write transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
from typing import cast

from broker.domain import events, filters
from broker.domain.errors import (
    BrokerError,
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    PreconditionViolation,
    ResourceBusyError,
    clip,
)
from broker.domain.kinds import Kind, KindRegistry
from broker.domain.matching import Matching, expand_slots, match
from broker.domain.replay import Replay, replay_of
from broker.domain.values import (
    AcquireRequest,
    Blocked,
    Constraint,
    EventType,
    Granted,
    GrantView,
    HolderView,
    LeaseState,
    LeaseView,
    Obstacle,
    ObstacleCause,
    Requirement,
)
from broker.domain.views import resource_view, snapshot
from broker.models import lease as lease_model
from broker.models import resource as resource_model
from broker.models.resource import Filter, Resource
from broker.models.setting import secret_key

MAX_REQUIREMENTS = 16
MAX_RESOURCES = 64
MIN_TTL = 1.0
MAX_LABEL = 64
MAX_HOLDER = 128
MAX_HOLDERS_REPORTED = 16


@dataclasses.dataclass(frozen=True)
class Need:
    """One checked requirement, ready for the candidate query."""

    index: int
    kind: Kind
    filters: list[Filter]
    count: int
    label: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """Candidates found for a request and the best assignment of them."""

    needs: list[Need]
    slot_needs: list[int]
    matching: Matching[int]
    by_id: dict[int, Resource]
    candidate_counts: list[int]

    @property
    def blocked_index(self) -> int:
        """The index of the first requirement left without a resource."""
        slot = self.matching.first_unmatched
        assert slot is not None, "only an incomplete plan is blocked"
        return self.needs[self.slot_needs[slot]].index

    def assigned_ownable(self) -> list[int]:
        """The free ownable resources the (partial) assignment uses."""
        return [
            resource_id
            for slot, resource_id in enumerate(self.matching.assignment)
            if resource_id is not None and self.needs[self.slot_needs[slot]].kind.ownable
        ]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Granter:
    """The rules of semantics 1, 2 and 6: distinct resources for all of a
    request or none, and a fencing number per grant."""

    def __init__(
        self, kinds: KindRegistry, default_ttl: float, max_ttl: float, max_lifetime: float = 0.0
    ):
        self.kinds = kinds
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        # Seconds a lease may live from its grant, however renewed; 0: no limit.
        self.max_lifetime = max_lifetime
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        """The database's secret key, read once."""
        if self._key is None:
            self._key = secret_key()
        return self._key

    def secret_for(self, lease_id: str) -> str:
        """A lease's secret, derived from the database's key: whichever call
        makes the grant (a waiting request is granted by the call that frees
        its resources), and a retry with the same request id, get the same
        secret, which is never stored."""
        return hmac.new(self.key, lease_id.encode(), hashlib.sha256).hexdigest()[:48]

    def replay_of(self, request: AcquireRequest, ttl: float) -> Replay | None:
        """What is kept of the request's `request_id`, if it has one."""
        return replay_of(self.key, request, ttl)

    # ------------------------------------------------------------ checking

    def check(self, request: AcquireRequest) -> tuple[list[Need], float]:
        """INVALID_ARGUMENT for a malformed request, FAILED_PRECONDITION for a
        kind or field that does not exist; else the needs and the TTL."""
        if not request.requirements:
            raise InvalidArgumentError.of("requirements", "at least one requirement is required")
        if len(request.requirements) > MAX_REQUIREMENTS:
            raise InvalidArgumentError.of(
                "requirements",
                f"at most {MAX_REQUIREMENTS} requirements, not {len(request.requirements)}",
            )
        if len(request.holder) > MAX_HOLDER:
            raise InvalidArgumentError.of("holder", f"is longer than {MAX_HOLDER} characters")
        ttl = self.default_ttl if request.ttl is None else request.ttl
        if not MIN_TTL <= ttl <= self.max_ttl:
            raise InvalidArgumentError.of(
                "ttl", f"must be {MIN_TTL:g} s to {self.max_ttl:g} s, not {ttl:g} s"
            )
        needs = [self._need(index, r) for index, r in enumerate(request.requirements)]
        total = sum(need.count for need in needs)
        if total > MAX_RESOURCES:
            raise InvalidArgumentError.of(
                "requirements", f"at most {MAX_RESOURCES} resources in all, not {total}"
            )
        return needs, float(ttl)

    def _need(self, index: int, requirement: Requirement) -> Need:
        path = f"requirements[{index}]"
        if not requirement.kind:
            raise InvalidArgumentError.of(f"{path}.kind", "is required")
        if not 0 <= requirement.count <= MAX_RESOURCES:
            raise InvalidArgumentError.of(
                f"{path}.count", f"must be 0 to {MAX_RESOURCES}, not {requirement.count}"
            )
        if len(requirement.label) > MAX_LABEL:
            raise InvalidArgumentError.of(f"{path}.label", f"is longer than {MAX_LABEL} characters")
        kind = self.kinds.find(requirement.kind)
        if kind is None:
            known = ", ".join(k.name for k in self.kinds) or "none"
            raise FailedPreconditionError(
                PreconditionViolation(
                    "UNKNOWN_KIND",
                    path,
                    f"{path}: no kind {clip(requirement.kind)!r} (kinds: {known})",
                )
            )
        resolved = filters.resolve(
            kind,
            requirement.constraints,
            f"{path}.constraints",
            lambda where, text: FailedPreconditionError(
                PreconditionViolation("UNKNOWN_FIELD", where, f"{where}: {text}")
            ),
        )
        return Need(index, kind, resolved, requirement.count or 1, requirement.label)

    # ------------------------------------------------------------- planning

    def plan(
        self,
        needs: list[Need],
        holder: str,
        now: float,
        *,
        free_only: bool = True,
        rank: tuple[int, int | None] | None = None,
        groups: tuple[str, ...] | None = None,
    ) -> Plan:
        """The best assignment of free resources (or, without `free_only`, of
        any that could be granted once freed) visible to `groups` to the
        request's slots. Each requirement needs at most as many candidates
        as the request has slots (see `matching`). Given the `rank` of a
        request (priority, and waiter id; None for a newcomer, which ranks
        behind every waiting request of its priority), resources reserved by
        requests ranking ahead of it are left out."""
        total = sum(need.count for need in needs)
        candidates = [
            resource_model.select_candidates(
                need.kind.model,
                need.kind.name,
                need.filters,
                holder=holder,
                mode=(
                    resource_model.FREE
                    if free_only and need.kind.ownable
                    else resource_model.USABLE
                ),
                limit=total,
                now=now,
                rank=rank,
                groups=groups,
            )
            for need in needs
        ]
        slot_needs = expand_slots([need.count for need in needs])
        by_id = {row.id: row for rows in candidates for row in rows}
        matching = match([[row.id for row in candidates[n]] for n in slot_needs])
        return Plan(needs, slot_needs, matching, by_id, [len(rows) for rows in candidates])

    def refusal(
        self,
        needs: list[Need],
        holder: str,
        busy: Plan,
        now: float,
        groups: tuple[str, ...] | None = None,
    ) -> BrokerError:
        """Why a request cannot be granted now: never (FAILED_PRECONDITION)
        or not yet (RESOURCE_EXHAUSTED), saying for each resource it could
        use why it does not get it (out of service, reserved, held)."""
        usable = self.plan(needs, holder, now, free_only=False, groups=groups)
        slot = usable.matching.first_unmatched
        if slot is not None:
            position = usable.slot_needs[slot]
            need = needs[position]
            path = f"requirements[{need.index}]"
            found = self.obstacles(need, holder, now, groups, limit=MAX_HOLDERS_REPORTED)
            lasting = [o for o in found if o.cause in _LASTING]
            matched = usable.candidate_counts[position]
            why = "; ".join(o.text for o in lasting)
            if matched or not why:
                why = (
                    f"it needs {need.count} usable {need.kind.name} resource(s) matching its "
                    f"constraints, distinct from the other requirements', and {matched} match"
                ) + (f" ({why})" if why else "")
            return FailedPreconditionError(
                PreconditionViolation(
                    "UNSATISFIABLE",
                    path,
                    f"{path} ({need.label or need.kind.name}) can never be satisfied: {why}",
                ),
                *(
                    PreconditionViolation(
                        o.cause.name,
                        f"resources/{o.resource}" if o.resource else path,
                        o.text,
                    )
                    for o in lasting
                ),
            )
        blocked = self.blocked(needs, holder, busy.blocked_index, now, groups)
        return ResourceBusyError(
            blocked.requirement_index,
            blocked.label,
            blocked.kind,
            list(blocked.holders),
            list(blocked.obstacles),
        )

    def blocked(
        self,
        needs: list[Need],
        holder: str,
        index: int,
        now: float,
        groups: tuple[str, ...] | None = None,
    ) -> Blocked:
        """Who holds the resources that requirement `index` could use, and
        why each of them is not granted now."""
        need = next(n for n in needs if n.index == index)
        total = sum(n.count for n in needs)
        limit = max(total, MAX_HOLDERS_REPORTED)
        rows = self._visible(need, holder, now, groups, limit)
        held = [row for row in rows if row.lease_id and row.is_usable][:MAX_HOLDERS_REPORTED]
        leases = lease_model.leases_by_id(sorted({row.lease_id for row in held if row.lease_id}))
        holders = tuple(
            HolderView(row.name, row.lease_id, row.owner, leases[row.lease_id].expire_time)
            for row in held
            if row.lease_id in leases
        )
        obstacles = self._obstacles_of(need, rows, holder, now, holders)
        return Blocked(need.index, need.label, need.kind.name, holders, obstacles)

    def obstacles(
        self,
        need: Need,
        holder: str,
        now: float,
        groups: tuple[str, ...] | None,
        limit: int,
    ) -> tuple[Obstacle, ...]:
        """Why each resource `need` could use (visible to `groups`) is not
        granted to `holder` now; `NO_SUCH_RESOURCE` if there is none."""
        rows = self._visible(need, holder, now, groups, limit)
        held = [row for row in rows if row.lease_id]
        leases = lease_model.leases_by_id(sorted({row.lease_id for row in held if row.lease_id}))
        holders = tuple(
            HolderView(row.name, row.lease_id, row.owner, leases[row.lease_id].expire_time)
            for row in held
            if row.lease_id in leases
        )
        return self._obstacles_of(need, rows, holder, now, holders)

    def _visible(self, need: Need, holder: str, now: float, groups, limit: int) -> list[Resource]:
        return resource_model.select_candidates(
            need.kind.model,
            need.kind.name,
            need.filters,
            holder=holder,
            mode=resource_model.EVERY,
            limit=limit,
            now=now,
            groups=groups,
        )

    def _obstacles_of(
        self,
        need: Need,
        rows: list[Resource],
        holder: str,
        now: float,
        holders: tuple[HolderView, ...],
    ) -> tuple[Obstacle, ...]:
        if not rows:
            return (Obstacle("", ObstacleCause.NO_SUCH_RESOURCE, _no_such_text(need)),)
        held = {h.resource: h for h in holders}
        found = []
        for row in rows:
            obstacle = _obstacle(row, holder, now, held.get(row.name))
            if obstacle is not None:
                found.append(obstacle)
        return tuple(found[:MAX_HOLDERS_REPORTED])

    # ------------------------------------------------------------ granting

    def commit(
        self,
        plan: Plan,
        *,
        lease_id: str,
        ttl: float,
        holder: str,
        now: float,
        replay: Replay | None = None,
        session_id: str = "",
        principal: str = "",
        waited: float = 0.0,
        behind_priority: int | None = None,
    ) -> Granted:
        """Records the grant of a complete plan: the lease, the claims (a
        conditional update, so a resource taken meanwhile aborts the grant),
        the fencing numbers, the grants and their events (with the seconds
        the request `waited` in the queue, if it did). The resources' owner
        is `principal` (empty: the holder). A newcomer gives its priority
        (`behind_priority`): a resource reserved meanwhile for a waiting
        request ahead of it aborts the grant too."""
        principal = principal or holder
        secret = self.secret_for(lease_id)
        max_expire_time = now + self.max_lifetime if self.max_lifetime > 0 else None
        lease = lease_model.insert_lease(
            {
                "id": lease_id,
                "secret_hash": hash_secret(secret),
                "holder": holder,
                "principal": principal,
                "state": int(LeaseState.ACTIVE),
                "ttl": ttl,
                "create_time": now,
                "expire_time": capped(now + ttl, max_expire_time),
                "max_expire_time": max_expire_time,
                "end_time": None,
                "end_reason": "",
                "request_key": replay.key if replay else None,
                "request_digest": replay.digest if replay else None,
                "session_id": session_id or None,
            }
        )
        # A complete plan: every slot has a resource.
        assignment = cast("tuple[int, ...]", plan.matching.assignment)
        chosen = [plan.by_id[rid] for rid in assignment]
        slot_kinds = [plan.needs[n].kind for n in plan.slot_needs]
        ownable = [row.id for row, kind in zip(chosen, slot_kinds, strict=True) if kind.ownable]
        shared = [row.id for row, kind in zip(chosen, slot_kinds, strict=True) if not kind.ownable]
        tokens = lease_model.claim_ownable(ownable, lease_id, principal, now, behind_priority)
        if len(tokens) != len(ownable):
            raise ConflictError("another lease took a resource first; retry")
        tokens.update(lease_model.bump_fencing(shared))
        grants, grant_rows, event_rows = [], [], []
        for n, row, kind in zip(plan.slot_needs, chosen, slot_kinds, strict=True):
            need = plan.needs[n]
            row.fencing_token = tokens[row.id]
            if kind.ownable:
                row.lease_id, row.owner = lease_id, principal
            view = resource_view(row, row.data, kind, (lease_id,))
            grants.append(GrantView(need.index, need.label, view, row.fencing_token))
            grant_rows.append(
                {
                    "lease": lease_id,
                    "resource": row.id,
                    "resource_name": row.name,
                    "requirement_index": need.index,
                    "label": need.label,
                    "fencing_token": row.fencing_token,
                    "snapshot": snapshot(view),
                }
            )
            event_rows.append(
                events.event(
                    EventType.LEASE_GRANTED,
                    now,
                    resource=row.name,
                    kind=kind.name,
                    lease_id=lease_id,
                    fencing_token=row.fencing_token,
                    actor=principal,
                    detail={"waited": round(waited, 6)} if waited > 0 else None,
                )
            )
        lease_model.insert_grants(grant_rows)
        events.record(*event_rows)
        return Granted(lease_view(lease, grants), secret)


# Causes that last until an administrator changes the inventory: a request
# that only such resources could serve fails at once. A reservation is not
# one: others wait until it ends, or is removed.
_LASTING = (ObstacleCause.NO_SUCH_RESOURCE, ObstacleCause.OUT_OF_SERVICE)


def when(seconds: float) -> str:
    """A time as obstacles print it (UTC, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _no_such_text(need: Need) -> str:
    names = next((values for field, values in need.filters if field == "name"), None)
    if names:
        named = " or ".join(repr(clip(str(name))) for name in names)
        return f"no {need.kind.name} resource is named {named}"
    return f"no {need.kind.name} resource matches the constraints"


def _obstacle(row: Resource, holder: str, now: float, held: HolderView | None) -> Obstacle | None:
    """Why `row` is not granted to `holder` now; None if nothing keeps it."""
    if not row.is_usable:
        reason = row.service_reason or row.comment or "no reason given"
        return Obstacle(
            row.name, ObstacleCause.OUT_OF_SERVICE, f"{row.name} is out of service: {reason}"
        )
    until = row.reserved_until
    if row.reserved_for and row.reserved_for != holder and (until is None or until > now):
        text = f"{row.name} is reserved for {row.reserved_for}"
        if until is not None:
            text += f" until {when(until)}"
        if row.reservation_reason:
            text += f": {row.reservation_reason}"
        return Obstacle(row.name, ObstacleCause.RESERVED, text, until, row.reserved_for)
    if row.lease_id:
        if held is None:
            return Obstacle(
                row.name, ObstacleCause.HELD, f"{row.name} is held by lease {row.lease_id}"
            )
        return Obstacle(
            row.name,
            ObstacleCause.HELD,
            f"{row.name} is held by {held.holder or held.lease_id} "
            f"(lease {held.lease_id}, until {when(held.expire_time)} unless renewed)",
            held.expire_time,
            held.holder,
        )
    if row.available_time is not None and row.available_time > now:
        return Obstacle(
            row.name,
            ObstacleCause.LOCK_DELAY,
            f"{row.name} is kept out of reach until {when(row.available_time)}: "
            "its last holder vanished",
            row.available_time,
        )
    if row.reserved_by is not None:
        return Obstacle(
            row.name,
            ObstacleCause.QUEUED_AHEAD,
            f"{row.name} is free but kept for a request ahead in the queue",
        )
    return None


def lease_view(lease: lease_model.Lease, grants: list[GrantView]) -> LeaseView:
    return LeaseView(
        lease_id=lease.id,
        holder=lease.holder,
        state=LeaseState(lease.state),
        grants=tuple(grants),
        ttl=lease.ttl,
        create_time=lease.create_time,
        expire_time=lease.expire_time,
        end_time=lease.end_time,
        end_reason=lease.end_reason,
        session_id=lease.session_id or "",
        principal=principal_of(lease),
        max_expire_time=lease.max_expire_time,
    )


def capped(expire_time: float, max_expire_time: float | None) -> float:
    """An expiry no later than a lease's maximum lifetime allows."""
    return expire_time if max_expire_time is None else min(expire_time, max_expire_time)


def principal_of(lease: lease_model.Lease) -> str:
    """Who holds a lease (a lease recorded before principals: its holder)."""
    return lease.principal or lease.holder


# --------------------------------------------- requirements kept by the queue


def encode_requirements(requirements: tuple[Requirement, ...]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in requirements], separators=(",", ":"))


def decode_requirements(text: str) -> tuple[Requirement, ...]:
    return tuple(
        Requirement(
            kind=item["kind"],
            constraints=tuple(
                Constraint(c["field"], tuple(c["values"]), c["any_of"]) for c in item["constraints"]
            ),
            count=item["count"],
            label=item["label"],
        )
        for item in json.loads(text)
    )
