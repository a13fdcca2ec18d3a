"""Storage of leases and of what each one was granted, with the named queries
that decide ownership.

Every function here runs inside the caller's transaction
(`transactions.write_transaction`); the conditional updates are the guard that
keeps an ownable resource with at most one lease even if two transactions
raced, so the domain never relies on reading before writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import peewee

from broker.models import statements
from broker.models.backend import backend_of
from broker.models.base import BaseModel
from broker.models.database import database_proxy
from broker.models.queue import WANTED, Freed
from broker.models.resource import Resource


class Lease(BaseModel):
    """A lease. `state` holds `broker.domain.values.LeaseState` numbers; the
    secret is kept only as its SHA-256."""

    id = peewee.CharField(max_length=36, primary_key=True)
    secret_hash = peewee.CharField(max_length=64)
    holder = peewee.CharField(max_length=128, default="")
    # The verified caller that acquired it (empty on leases from before
    # principals were recorded: their holder).
    principal = peewee.CharField(max_length=128, default="")
    state = peewee.SmallIntegerField()
    ttl = peewee.DoubleField()
    create_time = peewee.DoubleField()
    expire_time = peewee.DoubleField()
    end_time = peewee.DoubleField(null=True)
    end_reason = peewee.TextField(default="")
    # Keyed hashes of the acquire's request id and of the request
    # (`broker.domain.replay`): enough to recognise a retry, never the id.
    request_key = peewee.CharField(max_length=64, null=True, unique=True)
    request_digest = peewee.CharField(max_length=64, null=True)
    session_id = peewee.CharField(max_length=36, null=True, index=True)
    # The latest it may live however it is renewed (`leases.max_lifetime`
    # after its grant, fixed then); None: no limit.
    max_expire_time = peewee.DoubleField(null=True)

    class Meta:
        indexes = (
            (("state", "expire_time"), False),
            (("create_time", "id"), False),
            # Counting what a principal holds (quotas).
            (("principal", "state"), False),
        )


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
    # When the holder gave this resource back and kept the rest of the
    # lease (`ReleaseResources`); None while held.
    release_time = peewee.DoubleField(null=True)
    # For a sub-resource granted with its parent, the parent's name.
    parent = peewee.CharField(max_length=128, default="")
    # The keys themselves, without loading the rows.
    id: int
    lease_id: str
    resource_id: int | None


def insert_lease(values: dict) -> Lease:
    """Stores a new lease (with the transaction's next statement)."""
    statements.insert_rows_later(Lease, [values])
    return Lease(**values)


def insert_grants(rows: Sequence[dict]) -> None:
    """Stores the grants of a new lease (with the next statement)."""
    statements.insert_rows_later(LeaseGrant, rows)


def claim_ownable(
    resource_ids: Sequence[int],
    lease_id: str,
    owner: str,
    now: float,
    behind_priority: int | None = None,
) -> dict[int, int]:
    """Gives free ownable resources to a lease, bumps their fencing numbers
    and notes when they were granted; returns the new number of each
    resource taken. Given `behind_priority` (a newcomer's), a resource a
    waiting request of that priority or higher reserved meanwhile is not
    taken either. Fewer than asked means another lease, or a reservation,
    got there first, and the caller must roll back."""
    if not resource_ids:
        return {}
    queued = ""
    params: list = [lease_id, owner, now, *resource_ids]
    if behind_priority is not None:
        queued = ' AND ("reserved_by" IS NULL OR "reserved_priority" < ?)'
        params.append(behind_priority)
    cursor = statements.run(
        'UPDATE "resource" SET "lease_id" = ?, "owner" = ?, "fencing_token" = "fencing_token" + 1,'
        ' "last_grant_time" = ?, "reserved_by" = NULL, "reserved_priority" = NULL'
        f' WHERE "id" IN ({statements.marks(len(resource_ids))}) AND "lease_id" IS NULL{queued}'
        ' RETURNING "id", "fencing_token"',
        params,
    )
    return dict(cursor.fetchall())


def bump_fencing(resource_ids: Sequence[int]) -> dict[int, int]:
    """Grants of shared (non-ownable) resources still number their grants;
    returns the new number of each."""
    if not resource_ids:
        return {}
    cursor = statements.run(
        'UPDATE "resource" SET "fencing_token" = "fencing_token" + 1'
        f' WHERE "id" IN ({statements.marks(len(resource_ids))}) RETURNING "id", "fencing_token"',
        list(resource_ids),
    )
    return dict(cursor.fetchall())


def free_resources_of(lease_ids: Sequence[str]) -> list[Freed]:
    """Frees the ownable resources held by these leases; returns them."""
    if not lease_ids:
        return []
    cursor = statements.run(
        'UPDATE "resource" SET "lease_id" = NULL, "owner" = \'\''
        f' WHERE "lease_id" IN ({statements.marks(len(lease_ids))})'
        f' RETURNING "id", "kind", "name", {WANTED}',
        list(lease_ids),
    )
    return [(row[0], row[1], row[2], bool(row[3])) for row in cursor.fetchall()]


def free_resources(lease_id: str, resource_ids: Sequence[int]) -> list[Freed]:
    """Frees those of a lease's ownable resources; returns them."""
    if not resource_ids:
        return []
    cursor = statements.run(
        'UPDATE "resource" SET "lease_id" = NULL, "owner" = \'\''
        f' WHERE "lease_id" = ? AND "id" IN ({statements.marks(len(resource_ids))})'
        f' RETURNING "id", "kind", "name", {WANTED}',
        [lease_id, *resource_ids],
    )
    return [(row[0], row[1], row[2], bool(row[3])) for row in cursor.fetchall()]


def release_grants(grant_ids: Sequence[int], now: float) -> None:
    """Marks grants given back while their lease goes on (with the next
    statement)."""
    if grant_ids:
        statements.run_later(
            'UPDATE "lease_grant" SET "release_time" = ?'
            f' WHERE "id" IN ({statements.marks(len(grant_ids))})',
            [now, *grant_ids],
        )


def end_leases(lease_ids: Sequence[str], state: int, now: float, reason: str) -> None:
    """Marks leases ended (with the transaction's next statement)."""
    if lease_ids:
        statements.run_later(
            'UPDATE "lease" SET "state" = ?, "end_time" = ?, "end_reason" = ?'
            f' WHERE "id" IN ({statements.marks(len(lease_ids))})',
            [state, now, reason, *lease_ids],
        )


def extend_lease(lease_id: str, expire_time: float) -> None:
    """Moves an active lease's expiry (with the next statement)."""
    statements.run_later(
        'UPDATE "lease" SET "expire_time" = ? WHERE "id" = ?', [expire_time, lease_id]
    )


def due_lease_ids(active_state: int, now: float, limit: int) -> list[str]:
    """Active leases whose TTL has run out, oldest first."""
    cursor = statements.run(
        'SELECT "id" FROM "lease" WHERE "state" = ? AND "expire_time" <= ?'
        ' ORDER BY "expire_time" LIMIT ?',
        [active_state, now, limit],
    )
    return [row[0] for row in cursor.fetchall()]


def lock_due_leases(lease_ids: Sequence[str], active_state: int, now: float) -> dict[str, Lease]:
    """Of these leases, those still active and past their TTL, locked for
    change on PostgreSQL: a renewal or a release under way is waited for,
    and the lease left alone if it no longer qualifies."""
    if not lease_ids:
        return {}
    lock = backend_of(database_proxy).for_update()
    cursor = statements.run(
        f'SELECT {statements.column_list(Lease)} FROM "lease"'
        f' WHERE "id" IN ({statements.marks(len(lease_ids))}) AND "state" = ?'
        f' AND "expire_time" <= ? ORDER BY "id"{lock}',
        [*lease_ids, active_state, now],
    )
    leases = (statements.instance(Lease, row) for row in cursor.fetchall())
    return {lease.id: lease for lease in leases}


def lock_lease(lease_id: str) -> tuple[Lease, list[LeaseGrant]] | None:
    """Reads a lease for change, with its grants in requirement order, in one
    statement: on PostgreSQL the lease's row stays locked until the
    transaction ends (SQLite's write transaction already excludes others)."""
    lock = backend_of(database_proxy).for_update(' FOR UPDATE OF "l"')
    width = len(statements.columns_of(Lease))
    cursor = statements.run(
        f"SELECT {statements.column_list(Lease, 'l')}, {statements.column_list(LeaseGrant, 'g')}"
        ' FROM "lease" "l" LEFT JOIN "lease_grant" "g" ON "g"."lease_id" = "l"."id"'
        ' WHERE "l"."id" = ? ORDER BY "g"."requirement_index", "g"."id"' + lock,
        [lease_id],
    )
    rows = cursor.fetchall()
    if not rows:
        return None
    lease = statements.instance(Lease, rows[0][:width])
    grants = [
        statements.instance(LeaseGrant, row[width:]) for row in rows if row[width] is not None
    ]
    return lease, grants


def grants_wanted(lease_id: str) -> tuple[list[LeaseGrant], bool]:
    """A lease's grants, and whether a waiting request has a key one of its
    resources matches (its release will serve the queue), in one read."""
    cursor = statements.run(
        f'SELECT {statements.column_list(LeaseGrant, "g")}, {WANTED} FROM "lease_grant" "g"'
        ' LEFT JOIN "resource" ON "resource"."id" = "g"."resource_id"'
        ' WHERE "g"."lease_id" = ? AND "g"."release_time" IS NULL'
        ' ORDER BY "g"."requirement_index", "g"."id"',
        [lease_id],
    )
    rows = cursor.fetchall()
    grants = [statements.instance(LeaseGrant, row[:-1]) for row in rows]
    return grants, any(bool(row[-1]) for row in rows)


def grants_of(lease_ids: Sequence[str]) -> dict[str, list[LeaseGrant]]:
    """The grants of each lease, in requirement order (those given back
    early included: see `held`)."""
    result: dict[str, list[LeaseGrant]] = {lease_id: [] for lease_id in lease_ids}
    if lease_ids:
        cursor = statements.run(
            f'SELECT {statements.column_list(LeaseGrant)} FROM "lease_grant"'
            f' WHERE "lease_id" IN ({statements.marks(len(lease_ids))})'
            ' ORDER BY "requirement_index", "id"',
            list(lease_ids),
        )
        for row in cursor.fetchall():
            grant = statements.instance(LeaseGrant, row)
            result[grant.lease_id].append(grant)
    return result


def held(grants: Sequence[LeaseGrant]) -> list[LeaseGrant]:
    """The grants whose resources the lease still holds."""
    return [grant for grant in grants if grant.release_time is None]


def active_holders(resource_ids: Sequence[int], active_state: int) -> dict[int, list[Lease]]:
    """The active leases holding each resource (ownable or not)."""
    result: dict[int, list[Lease]] = {rid: [] for rid in resource_ids}
    if resource_ids:
        query = (
            LeaseGrant.select(LeaseGrant.resource, Lease)
            .join(Lease)
            .where(
                LeaseGrant.resource.in_(list(resource_ids))
                & (Lease.state == active_state)
                & LeaseGrant.release_time.is_null()
            )
            .order_by(Lease.create_time)
        )
        for grant in query:
            # The query keeps only grants of these resources: never None.
            result[cast(int, grant.resource_id)].append(grant.lease)
    return result


def list_leases(
    state: int | None,
    holder: str,
    resource: str,
    before: tuple[float, str] | None,
    limit: int,
    principal: str = "",
) -> list[Lease]:
    """Leases newest first, optionally filtered, starting after `before`
    (the (create_time, id) of the last lease of the previous page). A lease
    recorded before principals is its holder's."""
    query = Lease.select()
    if state is not None:
        query = query.where(Lease.state == state)
    if holder:
        query = query.where(Lease.holder == holder)
    if principal:
        query = query.where(
            (Lease.principal == principal) | ((Lease.principal == "") & (Lease.holder == principal))
        )
    if resource:
        granted = LeaseGrant.select(LeaseGrant.lease).where(LeaseGrant.resource_name == resource)
        query = query.where(Lease.id.in_(granted))
    if before is not None:
        time, lease_id = before
        query = query.where(
            (Lease.create_time < time) | ((Lease.create_time == time) & (Lease.id < lease_id))
        )
    return list(query.order_by(Lease.create_time.desc(), Lease.id.desc()).limit(limit))


def resources_held(principal: str, active_state: int) -> int:
    """How many resources the principal's active leases were granted (not
    counting the sub-resources that came with them): one read through the
    (principal, state) index and the grants' lease index."""
    cursor = statements.run(
        'SELECT COUNT(*) FROM "lease_grant" JOIN "lease" ON "lease_grant"."lease_id" = "lease"."id"'
        ' WHERE "lease"."principal" = ? AND "lease"."state" = ?'
        ' AND "lease_grant"."release_time" IS NULL AND "lease_grant"."parent" = ?',
        [principal, active_state, ""],
    )
    return cursor.fetchone()[0]


def lease_by_request_key(request_key: str) -> Lease | None:
    """The lease granted to the request whose id has this keyed hash."""
    return Lease.get_or_none(Lease.request_key == request_key)


def leases_by_id(lease_ids: Sequence[str]) -> dict[str, Lease]:
    """Lease rows by id."""
    if not lease_ids:
        return {}
    return {row.id: row for row in Lease.select().where(Lease.id.in_(list(lease_ids)))}


class FencingFloor(BaseModel):
    """The highest fencing number of a resource name among the grants that
    retention deleted, so that numbers keep growing without them."""

    resource_name = peewee.CharField(max_length=128, primary_key=True)
    fencing_token = peewee.BigIntegerField()


def highest_fencing_token(resource_name: str) -> int:
    """The highest number ever granted for a resource of this name, so that a
    resource deleted and created again keeps numbering upwards."""
    highest = (
        LeaseGrant.select(peewee.fn.MAX(LeaseGrant.fencing_token))
        .where(LeaseGrant.resource_name == resource_name)
        .scalar()
    )
    floor = FencingFloor.get_or_none(FencingFloor.resource_name == resource_name)
    return max(highest or 0, floor.fencing_token if floor else 0)


def delete_ended_leases(ended_states: Sequence[int], cutoff: float, limit: int) -> int:
    """Inside a write transaction: deletes up to `limit` leases in
    `ended_states` that ended before `cutoff`, with their grants, keeping
    each resource name's highest fencing number (`FencingFloor`); returns
    how many. The (state, expire_time) index bounds the read: a lease
    released or revoked ended before its expiry, and one that expired ended
    after it."""
    ids = [
        row.id
        for row in Lease.select(Lease.id)
        .where(
            Lease.state.in_(list(ended_states)),
            Lease.expire_time < cutoff,
            Lease.end_time < cutoff,
        )
        .limit(limit)
    ]
    if not ids:
        return 0
    # `.tuples()` rows are (name, token) pairs; peewee's stubs keep the model type.
    rows = cast(
        "Iterable[tuple[str, int]]",
        LeaseGrant.select(LeaseGrant.resource_name, peewee.fn.MAX(LeaseGrant.fencing_token))
        .where(LeaseGrant.lease.in_(ids))
        .group_by(LeaseGrant.resource_name)
        .tuples(),
    )
    highest = dict(rows)
    floors = {
        row.resource_name: row.fencing_token
        for row in FencingFloor.select().where(FencingFloor.resource_name.in_(list(highest)))
    }
    for name, token in highest.items():
        if name not in floors:
            FencingFloor.insert(resource_name=name, fencing_token=token).execute()
        elif token > floors[name]:
            FencingFloor.update(fencing_token=token).where(
                FencingFloor.resource_name == name
            ).execute()
    LeaseGrant.delete().where(LeaseGrant.lease.in_(ids)).execute()
    Lease.delete().where(Lease.id.in_(ids)).execute()
    return len(ids)
