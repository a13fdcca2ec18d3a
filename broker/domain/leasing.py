"""Leasing: granting requirements all at once, renewing, releasing, revoking
and expiring leases.

Each operation is one write transaction. Expired leases are freed at the start
of every acquire, so a lease whose TTL ran out never blocks anyone, however
late the periodic sweep (`expiry.Reaper`) comes. Outcomes that must keep what
the transaction did (an expiry found on the way) are returned from the
transaction and raised after it commits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable

from broker.domain import events, filters, paging
from broker.domain.errors import (
    BrokerError,
    ConflictError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionViolation,
    ResourceBusyError,
)
from broker.domain.kinds import Kind, KindRegistry
from broker.domain.matching import expand_slots, match
from broker.domain.values import (
    AcquireRequest,
    EventType,
    Granted,
    GrantView,
    HolderView,
    LeaseState,
    LeaseView,
    Page,
)
from broker.domain.views import from_snapshot, resource_view, snapshot
from broker.models import lease as lease_model
from broker.models import resource as resource_model
from broker.models.database import write_transaction
from broker.models.resource import Filter, Resource

MAX_REQUIREMENTS = 16
MAX_RESOURCES = 64
MIN_TTL = 1.0
MAX_LABEL = 64
MAX_HOLDER = 128
MAX_REASON = 1024
MAX_HOLDERS_REPORTED = 16
EXPIRY_BATCH = 500

_ENDED = {
    LeaseState.RELEASED: ("LEASE_RELEASED", "was released"),
    LeaseState.EXPIRED: ("LEASE_EXPIRED", "expired: its TTL ran out before it was renewed"),
    LeaseState.REVOKED: ("LEASE_REVOKED", "was revoked"),
}


@dataclasses.dataclass(frozen=True)
class _Need:
    """One checked requirement, ready for the candidate query."""

    index: int
    kind: Kind
    filters: list[Filter]
    count: int
    label: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Leases:
    """Who holds what: the rules of semantics 1 to 4 and 6 of the design."""

    def __init__(
        self,
        kinds: KindRegistry,
        *,
        default_ttl: float,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
    ):
        self.kinds = kinds
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.clock = clock

    # ------------------------------------------------------------- acquire

    def acquire(self, request: AcquireRequest) -> Granted:
        """Grants every requirement at once with distinct resources, or
        raises: FAILED_PRECONDITION if no state of the inventory could ever
        serve it, RESOURCE_EXHAUSTED if it is held now."""
        needs, ttl = self._check(request)
        now = self.clock()
        with write_transaction():
            self._expire_due(now)
            outcome = self._grant(needs, ttl, request.holder, now)
        if isinstance(outcome, BrokerError):
            raise outcome
        return outcome

    def _check(self, request: AcquireRequest) -> tuple[list[_Need], float]:
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
        needs = []
        for index, requirement in enumerate(request.requirements):
            path = f"requirements[{index}]"
            if not requirement.kind:
                raise InvalidArgumentError.of(f"{path}.kind", "is required")
            if not 0 <= requirement.count <= MAX_RESOURCES:
                raise InvalidArgumentError.of(
                    f"{path}.count", f"must be 0 to {MAX_RESOURCES}, not {requirement.count}"
                )
            if len(requirement.label) > MAX_LABEL:
                raise InvalidArgumentError.of(
                    f"{path}.label", f"is longer than {MAX_LABEL} characters"
                )
            kind = self.kinds.find(requirement.kind)
            if kind is None:
                known = ", ".join(k.name for k in self.kinds) or "none"
                raise FailedPreconditionError(
                    PreconditionViolation(
                        "UNKNOWN_KIND",
                        path,
                        f"{path}: no kind {requirement.kind!r} (kinds: {known})",
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
            needs.append(_Need(index, kind, resolved, requirement.count or 1, requirement.label))
        total = sum(need.count for need in needs)
        if total > MAX_RESOURCES:
            raise InvalidArgumentError.of(
                "requirements", f"at most {MAX_RESOURCES} resources in all, not {total}"
            )
        return needs, float(ttl)

    def _candidates(self, needs: list[_Need], holder: str, free_only: bool) -> list[list[Resource]]:
        """Per requirement, at most as many candidates as the request has
        slots (enough for any assignment: see `matching`)."""
        total = sum(need.count for need in needs)
        return [
            resource_model.select_candidates(
                need.kind.model,
                need.kind.name,
                need.filters,
                holder=holder,
                free_only=free_only and need.kind.ownable,
                limit=total,
            )
            for need in needs
        ]

    def _assign(self, needs: list[_Need], candidates: list[list[Resource]]):
        slot_needs = expand_slots([need.count for need in needs])
        by_id = {row.id: row for rows in candidates for row in rows}
        matching = match([[row.id for row in candidates[n]] for n in slot_needs])
        return slot_needs, matching, by_id

    def _grant(self, needs: list[_Need], ttl: float, holder: str, now: float):
        candidates = self._candidates(needs, holder, free_only=True)
        slot_needs, matching, by_id = self._assign(needs, candidates)
        if not matching.complete:
            return self._refusal(needs, holder, needs[slot_needs[matching.first_unmatched]].index)
        lease_id = str(uuid.uuid4())
        secret = secrets.token_hex(24)
        lease = lease_model.insert_lease(
            {
                "id": lease_id,
                "secret_hash": _hash(secret),
                "holder": holder,
                "state": int(LeaseState.ACTIVE),
                "ttl": ttl,
                "create_time": now,
                "expire_time": now + ttl,
                "end_time": None,
                "end_reason": "",
            }
        )
        chosen = [by_id[rid] for rid in matching.assignment]
        slot_kinds = [needs[n].kind for n in slot_needs]
        ownable = [row.id for row, kind in zip(chosen, slot_kinds, strict=True) if kind.ownable]
        shared = [row.id for row, kind in zip(chosen, slot_kinds, strict=True) if not kind.ownable]
        tokens = lease_model.claim_ownable(ownable, lease_id, holder)
        if len(tokens) != len(ownable):
            raise ConflictError("another lease took a resource first; retry")
        tokens.update(lease_model.bump_fencing(shared))
        grants, grant_rows, event_rows = [], [], []
        for n, row, kind in zip(slot_needs, chosen, slot_kinds, strict=True):
            need = needs[n]
            row.fencing_token = tokens[row.id]
            if kind.ownable:
                row.lease_id, row.owner = lease_id, holder
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
                    lease_id=lease_id,
                    fencing_token=row.fencing_token,
                    actor=holder,
                )
            )
        lease_model.insert_grants(grant_rows)
        events.record(*event_rows)
        return Granted(self._view(lease, grants), secret)

    def _refusal(self, needs: list[_Need], holder: str, busy_index: int) -> BrokerError:
        """Why a request cannot be granted now: never (FAILED_PRECONDITION)
        or not yet (RESOURCE_EXHAUSTED, naming who holds what it needs)."""
        candidates = self._candidates(needs, holder, free_only=False)
        slot_needs, matching, _ = self._assign(needs, candidates)
        if not matching.complete:
            need = needs[slot_needs[matching.first_unmatched]]
            path = f"requirements[{need.index}]"
            usable = len(candidates[needs.index(need)])
            return FailedPreconditionError(
                PreconditionViolation(
                    "UNSATISFIABLE",
                    path,
                    f"{path} ({need.label or need.kind.name}) can never be satisfied: "
                    f"it needs {need.count} usable {need.kind.name} resource(s) matching its "
                    f"constraints, distinct from the other requirements', and "
                    f"{usable} match",
                )
            )
        need = next(n for n in needs if n.index == busy_index)
        held = [row for row in candidates[needs.index(need)] if row.lease_id]
        leases = lease_model.leases_by_id(sorted({row.lease_id for row in held}))
        holders = [
            HolderView(row.name, row.lease_id, row.owner, leases[row.lease_id].expire_time)
            for row in held[:MAX_HOLDERS_REPORTED]
            if row.lease_id in leases
        ]
        return ResourceBusyError(need.index, need.label, need.kind.name, holders)

    # ------------------------------------------------ renew, release, revoke

    def renew(self, lease_id: str, secret: str) -> LeaseView:
        """Extends an active lease by its TTL from now."""

        def extend(lease: lease_model.Lease, grants: list, now: float) -> None:
            lease.expire_time = now + lease.ttl
            lease_model.extend_lease(lease.id, lease.expire_time)

        return self._change(lease_id, secret, extend)

    def release(self, lease_id: str, secret: str) -> LeaseView:
        """Ends a lease at its holder's request and frees its resources."""

        def end(lease: lease_model.Lease, grants: list, now: float) -> None:
            self._end(
                lease, grants, LeaseState.RELEASED, now, "released by its holder", lease.holder
            )

        return self._change(lease_id, secret, end)

    def revoke(self, lease_id: str, reason: str, actor: str = "") -> LeaseView:
        """Ends someone's lease, recording why."""
        if not reason.strip():
            raise InvalidArgumentError.of("reason", "is required: say why the lease is revoked")
        if len(reason) > MAX_REASON:
            raise InvalidArgumentError.of("reason", f"is longer than {MAX_REASON} characters")

        def end(lease: lease_model.Lease, grants: list, now: float) -> None:
            self._end(lease, grants, LeaseState.REVOKED, now, reason, actor)

        return self._change(lease_id, None, end)

    def _change(self, lease_id: str, secret: str | None, change) -> LeaseView:
        """Applies `change` to an active lease after checking the secret
        (None: no secret needed). A lease found past its TTL is expired and
        committed first, then reported."""
        if not lease_id:
            raise InvalidArgumentError.of("lease_id", "is required")
        now = self.clock()
        with write_transaction():
            lease = lease_model.lock_lease(lease_id)
            if lease is None:
                raise NotFoundError("lease", lease_id)
            if secret is not None:
                if not secret:
                    raise PermissionDeniedError(
                        f"lease {lease_id} needs its secret for this call", "NO_SECRET"
                    )
                if not hmac.compare_digest(_hash(secret), lease.secret_hash):
                    raise PermissionDeniedError(
                        f"the secret given is not lease {lease_id}'s: only its holder may act on it"
                    )
            grants = lease_model.grants_of([lease.id])
            if lease.state == LeaseState.ACTIVE and lease.expire_time <= now:
                self._end(lease, grants[lease.id], LeaseState.EXPIRED, now, "its TTL ran out", "")
            if lease.state != LeaseState.ACTIVE:
                code, text = _ENDED[LeaseState(lease.state)]
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

    def expire_due(self) -> int:
        """Frees every lease whose TTL has run out; returns how many."""
        now = self.clock()
        with write_transaction():
            return self._expire_due(now)

    def _expire_due(self, now: float) -> int:
        """Ends every lease past its TTL, in batches."""
        expired = 0
        while True:
            due = lease_model.due_lease_ids(LeaseState.ACTIVE, now, EXPIRY_BATCH)
            grants = lease_model.grants_of(due)
            for lease in lease_model.leases_by_id(due).values():
                self._end(lease, grants[lease.id], LeaseState.EXPIRED, now, "its TTL ran out", "")
            expired += len(due)
            if len(due) < EXPIRY_BATCH:
                return expired

    def _end(
        self,
        lease: lease_model.Lease,
        grants: list[lease_model.LeaseGrant],
        state: LeaseState,
        now: float,
        reason: str,
        actor: str,
    ) -> None:
        """Ends one lease: frees its resources and records an event for each."""
        event_type = {
            LeaseState.RELEASED: EventType.LEASE_RELEASED,
            LeaseState.EXPIRED: EventType.LEASE_EXPIRED,
            LeaseState.REVOKED: EventType.LEASE_REVOKED,
        }[state]
        lease_model.free_resources_of([lease.id])
        lease_model.end_leases([lease.id], state, now, reason)
        lease.state, lease.end_time, lease.end_reason = state, now, reason
        events.record(
            *(
                events.event(
                    event_type,
                    now,
                    resource=grant.resource_name,
                    lease_id=lease.id,
                    fencing_token=grant.fencing_token,
                    actor=actor,
                    detail={"reason": reason} if state == LeaseState.REVOKED else None,
                )
                for grant in grants
            )
        )

    # ------------------------------------------------------------------ reads

    def get(self, lease_id: str) -> LeaseView:
        if not lease_id:
            raise InvalidArgumentError.of("lease_id", "is required")
        lease = lease_model.leases_by_id([lease_id]).get(lease_id)
        if lease is None:
            raise NotFoundError("lease", lease_id)
        return self._views([lease])[0]

    def list(
        self,
        state: LeaseState | None,
        holder: str,
        resource: str,
        page_size: int,
        page_token: str,
    ) -> Page[LeaseView]:
        size = paging.page_size(page_size)
        position = paging.decode_token(page_token, ("time", "id"))
        before = None
        if position is not None:
            if not isinstance(position["time"], int | float) or not isinstance(position["id"], str):
                raise InvalidArgumentError.of("page_token", "not a token returned by this listing")
            before = (float(position["time"]), position["id"])
        rows = lease_model.list_leases(
            None if state is None else int(state), holder, resource, before, size + 1
        )
        more = len(rows) > size
        rows = rows[:size]
        token = (
            paging.encode_token({"time": rows[-1].create_time, "id": rows[-1].id}) if more else ""
        )
        return Page(tuple(self._views(rows)), token)

    def _views(
        self,
        leases: list[lease_model.Lease],
        grants: dict[str, list[lease_model.LeaseGrant]] | None = None,
    ) -> list[LeaseView]:
        """Views of leases; `grants` may bring their grants, already read."""
        if grants is None:
            grants = lease_model.grants_of([lease.id for lease in leases])
        views = []
        for lease in leases:
            grant_views = []
            for grant in grants[lease.id]:
                view = from_snapshot(grant.resource_name, grant.snapshot, grant.fencing_token)
                if lease.state == LeaseState.ACTIVE:
                    kind = self.kinds.find(view.kind)
                    owner = lease.holder if kind is None or kind.ownable else ""
                    view = dataclasses.replace(view, owner=owner, lease_ids=(lease.id,))
                grant_views.append(
                    GrantView(grant.requirement_index, grant.label, view, grant.fencing_token)
                )
            views.append(self._view(lease, grant_views))
        return views

    @staticmethod
    def _view(lease: lease_model.Lease, grants: list[GrantView]) -> LeaseView:
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
        )
