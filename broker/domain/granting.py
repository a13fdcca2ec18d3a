"""Granting: recording the grant of a complete plan (the lease, the claims,
the fencing numbers, the grants and their events) and the lease's secret.
Shared by a direct acquire and by the queue, which grants waiting requests
as resources come free. Checking a request is `broker.domain.requests`,
choosing its resources `broker.domain.planning`, and saying why it is not
granted `broker.domain.refusals`.

All functions run inside the caller's write transaction.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import cast

from broker.domain import events
from broker.domain.errors import ConflictError
from broker.domain.kinds import Kind, KindRegistry
from broker.domain.planning import Plan
from broker.domain.replay import Replay, replay_of
from broker.domain.requests import Need
from broker.domain.values import (
    AcquireRequest,
    EventType,
    Granted,
    GrantView,
    LeaseState,
    LeaseView,
)
from broker.domain.views import resource_view, snapshot
from broker.models import lease as lease_model
from broker.models import resource as resource_model
from broker.models.resource import Resource
from broker.models.setting import secret_key


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Granter:
    """The rules of semantics 1 and 6 at the grant: all of a plan's
    resources claimed at once or none, and a fencing number per grant."""

    def __init__(self, kinds: KindRegistry, max_lifetime: float = 0.0):
        self.kinds = kinds
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
        chosen = [
            (plan.needs[n], plan.by_id[rid], plan.needs[n].kind)
            for n, rid in zip(plan.slot_needs, assignment, strict=True)
        ]
        children = self._children(chosen)
        taken = chosen + [(need, row, kind) for need, row, kind, _ in children]
        ownable = [row.id for _, row, kind in taken if kind.ownable]
        shared = [row.id for _, row, kind in taken if not kind.ownable]
        tokens = lease_model.claim_ownable(ownable, lease_id, principal, now, behind_priority)
        if len(tokens) != len(ownable):
            raise ConflictError("another lease took a resource first; retry")
        tokens.update(lease_model.bump_fencing(shared))
        # The parents of resources granted alone, for their views.
        parents = resource_model.names_of(row.parent_id for _, row, _ in chosen)
        given = [(need, row, kind, "") for need, row, kind in chosen] + children
        grants, grant_rows, event_rows = [], [], []
        for need, row, kind, parent in given:
            row.fencing_token = tokens[row.id]
            if kind.ownable:
                row.lease_id, row.owner = lease_id, principal
            view = resource_view(
                row, row.data, kind, (lease_id,), parent or parents.get(row.parent_id or 0, "")
            )
            grants.append(GrantView(need.index, need.label, view, row.fencing_token, None, parent))
            grant_rows.append(
                {
                    "lease": lease_id,
                    "resource": row.id,
                    "resource_name": row.name,
                    "requirement_index": need.index,
                    "label": need.label,
                    "fencing_token": row.fencing_token,
                    "snapshot": snapshot(view),
                    "release_time": None,
                    "parent": parent,
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
        # A requirement's grants: its resources, then their sub-resources.
        order = sorted(range(len(grants)), key=lambda i: grants[i].requirement_index)
        grants = [grants[i] for i in order]
        grant_rows = [grant_rows[i] for i in order]
        lease_model.insert_grants(grant_rows)
        events.record(*event_rows)
        return Granted(lease_view(lease, grants), secret)

    def _children(self, chosen: list[tuple[Need, Resource, Kind]]) -> list[tuple]:
        """The sub-resources of the chosen resources, each as (the need of
        its parent, its row, its kind, its parent's name), in the order of
        their parents and fields. The plan saw them free; the claim checks
        it again."""
        wanted: list[tuple[Need, Resource, Kind, int]] = []
        for need, row, kind in chosen:
            ids = kind.reference_ids(row.data)
            for spec in kind.references:
                child_id = ids[spec.name]
                if child_id is not None:
                    wanted.append((need, row, self.kinds.get(spec.kind), child_id))
        by_kind: dict[str, list[int]] = {}
        for _, _, child_kind, child_id in wanted:
            by_kind.setdefault(child_kind.name, []).append(child_id)
        rows = {
            row.id: row
            for name, ids in by_kind.items()
            for row in resource_model.rows_with_data(self.kinds.get(name).model, ids)
        }
        children = []
        for need, parent, child_kind, child_id in wanted:
            child = rows.get(child_id)
            if child is None:
                raise ConflictError(f"a sub-resource of {parent.name!r} was deleted; retry")
            children.append((need, child, child_kind, parent.name))
        return children


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
