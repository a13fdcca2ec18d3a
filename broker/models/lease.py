"""Storage of leases and of what each one was granted, with the named queries
that decide ownership.

Every function here runs inside the caller's transaction
(`database.write_transaction`); the conditional updates are the guard that
keeps an ownable resource with at most one lease even if two transactions
raced, so the domain never relies on reading before writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import peewee

from broker.models.base import BaseModel
from broker.models.resource import Resource


class Lease(BaseModel):
    """A lease. `state` holds `broker.domain.values.LeaseState` numbers; the
    secret is kept only as its SHA-256."""

    id = peewee.CharField(max_length=36, primary_key=True)
    secret_hash = peewee.CharField(max_length=64)
    holder = peewee.CharField(max_length=128, default="")
    state = peewee.SmallIntegerField()
    ttl = peewee.DoubleField()
    create_time = peewee.DoubleField()
    expire_time = peewee.DoubleField()
    end_time = peewee.DoubleField(null=True)
    end_reason = peewee.TextField(default="")

    class Meta:
        indexes = ((("state", "expire_time"), False), (("create_time", "id"), False))


class LeaseGrant(BaseModel):
    """One resource granted by a lease, with the fencing number of that grant
    and a snapshot of the resource as it was granted (JSON), so that reading a
    lease never depends on the resource still existing."""

    lease = peewee.ForeignKeyField(Lease, backref="grants", on_delete="CASCADE")
    resource = peewee.ForeignKeyField(Resource, null=True, on_delete="SET NULL", backref="+")
    resource_name = peewee.CharField(max_length=128, index=True)
    requirement_index = peewee.SmallIntegerField()
    label = peewee.CharField(max_length=64, default="")
    fencing_token = peewee.BigIntegerField()
    snapshot = peewee.TextField()


def claim_ownable(resource_ids: Sequence[int], lease_id: str, owner: str, now: float) -> int:
    """Gives free ownable resources to a lease and bumps their fencing numbers;
    returns how many it took (fewer than asked means another lease got there
    first, and the caller must roll back)."""
    if not resource_ids:
        return 0
    return (
        Resource.update(
            lease_id=lease_id,
            owner=owner,
            fencing_token=Resource.fencing_token + 1,
        )
        .where(Resource.id.in_(list(resource_ids)) & Resource.lease_id.is_null())
        .execute()
    )


def bump_fencing(resource_ids: Sequence[int]) -> None:
    """Grants of shared (non-ownable) resources still number their grants."""
    if resource_ids:
        Resource.update(fencing_token=Resource.fencing_token + 1).where(
            Resource.id.in_(list(resource_ids))
        ).execute()


def fencing_tokens(resource_ids: Sequence[int]) -> dict[int, int]:
    """The current fencing number of each resource."""
    query = Resource.select(Resource.id, Resource.fencing_token).where(
        Resource.id.in_(list(resource_ids))
    )
    return {row.id: row.fencing_token for row in query}


def free_resources_of(lease_ids: Iterable[str]) -> None:
    """Frees the ownable resources held by these leases."""
    ids = list(lease_ids)
    if ids:
        Resource.update(lease_id=None, owner="").where(Resource.lease_id.in_(ids)).execute()


def end_leases(lease_ids: Iterable[str], state: int, now: float, reason: str) -> None:
    """Marks leases ended."""
    ids = list(lease_ids)
    if ids:
        Lease.update(state=state, end_time=now, end_reason=reason).where(
            Lease.id.in_(ids)
        ).execute()


def due_lease_ids(active_state: int, now: float, limit: int = 500) -> list[str]:
    """Active leases whose TTL has run out, oldest first."""
    query = (
        Lease.select(Lease.id)
        .where((Lease.state == active_state) & (Lease.expire_time <= now))
        .order_by(Lease.expire_time)
        .limit(limit)
    )
    return [row.id for row in query]


def lock_lease(lease_id: str) -> Lease | None:
    """Reads a lease for change: on PostgreSQL the row stays locked until the
    transaction ends (SQLite's write transaction already excludes others)."""
    query = Lease.select().where(Lease.id == lease_id)
    if not isinstance(Lease._meta.database.obj, peewee.SqliteDatabase):
        query = query.for_update()
    return query.first()


def grants_of(lease_ids: Sequence[str]) -> dict[str, list[LeaseGrant]]:
    """The grants of each lease, in requirement order."""
    result: dict[str, list[LeaseGrant]] = {lease_id: [] for lease_id in lease_ids}
    if lease_ids:
        query = (
            LeaseGrant.select()
            .where(LeaseGrant.lease.in_(list(lease_ids)))
            .order_by(LeaseGrant.requirement_index, LeaseGrant.id)
        )
        for grant in query:
            result[grant.lease_id].append(grant)
    return result


def active_holders(resource_ids: Sequence[int], active_state: int) -> dict[int, list[Lease]]:
    """The active leases holding each resource (ownable or not)."""
    result: dict[int, list[Lease]] = {rid: [] for rid in resource_ids}
    if resource_ids:
        query = (
            LeaseGrant.select(LeaseGrant.resource, Lease)
            .join(Lease)
            .where(LeaseGrant.resource.in_(list(resource_ids)) & (Lease.state == active_state))
            .order_by(Lease.create_time)
        )
        for grant in query:
            result[grant.resource_id].append(grant.lease)
    return result


def list_leases(
    state: int | None,
    holder: str,
    resource: str,
    before: tuple[float, str] | None,
    limit: int,
) -> list[Lease]:
    """Leases newest first, optionally filtered, starting after `before`
    (the (create_time, id) of the last lease of the previous page)."""
    query = Lease.select()
    if state is not None:
        query = query.where(Lease.state == state)
    if holder:
        query = query.where(Lease.holder == holder)
    if resource:
        granted = LeaseGrant.select(LeaseGrant.lease).where(LeaseGrant.resource_name == resource)
        query = query.where(Lease.id.in_(granted))
    if before is not None:
        time, lease_id = before
        query = query.where(
            (Lease.create_time < time) | ((Lease.create_time == time) & (Lease.id < lease_id))
        )
    return list(query.order_by(Lease.create_time.desc(), Lease.id.desc()).limit(limit))


def leases_by_id(lease_ids: Sequence[str]) -> dict[str, Lease]:
    """Lease rows by id."""
    if not lease_ids:
        return {}
    return {row.id: row for row in Lease.select().where(Lease.id.in_(list(lease_ids)))}


def highest_fencing_token(resource_name: str) -> int:
    """The highest number ever granted for a resource of this name, so that a
    resource deleted and created again keeps numbering upwards."""
    highest = (
        LeaseGrant.select(peewee.fn.MAX(LeaseGrant.fencing_token))
        .where(LeaseGrant.resource_name == resource_name)
        .scalar()
    )
    return highest or 0
