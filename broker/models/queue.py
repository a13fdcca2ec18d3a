"""Storage of the wait queue: requests waiting for resources, in the order
they will be served, and the reservations their waits hold on free resources."""

from __future__ import annotations

import json
from collections.abc import Sequence

import peewee

from broker.models import statements
from broker.models.base import BaseModel


class Waiter(BaseModel):
    """A waiting request: `requirements` as JSON, `state` holds
    `broker.domain.values.WaiterState` numbers. The id orders arrivals; the
    lease id is chosen on arrival so that the grant, made by whichever call
    frees the resources, needs nothing more from the waiting caller."""

    id = peewee.BigAutoField()
    # Keyed hashes of the request's id and of the request, as on `Lease`;
    # cleared when the wait ends ungranted, so a retry then waits anew.
    request_key = peewee.CharField(max_length=64, null=True, unique=True)
    request_digest = peewee.CharField(max_length=64, null=True)
    lease_id = peewee.CharField(max_length=36, unique=True)
    holder = peewee.CharField(max_length=128, default="")
    principal = peewee.CharField(max_length=128, default="")
    priority = peewee.IntegerField(default=0)
    requirements = peewee.TextField()
    ttl = peewee.DoubleField()
    session_id = peewee.CharField(max_length=36, null=True)
    state = peewee.SmallIntegerField()
    enqueue_time = peewee.DoubleField()
    deadline = peewee.DoubleField()
    blocked_index = peewee.IntegerField(default=0)
    end_time = peewee.DoubleField(null=True)
    # The groups whose resources it may be granted, as JSON; NULL: every group.
    groups = peewee.TextField(null=True)

    class Meta:
        indexes = ((("state", "priority", "id"), False), (("state", "end_time"), False))


def groups_of(waiter: Waiter) -> tuple[str, ...] | None:
    """The groups whose resources a waiting request may be granted."""
    return None if waiter.groups is None else tuple(json.loads(waiter.groups))


def insert_waiter(values: dict) -> int:
    """Stores a waiting request; returns its id."""
    return Waiter.insert(**values).execute()


def waiting(state: int) -> list[Waiter]:
    """Every waiting request, in the order they are served."""
    cursor = statements.run(
        f'SELECT {statements.column_list(Waiter)} FROM "waiter" WHERE "state" = ?'
        ' ORDER BY "priority" DESC, "id"',
        [state],
    )
    return [statements.instance(Waiter, row) for row in cursor.fetchall()]


def get_waiter(waiter_id: int) -> Waiter | None:
    cursor = statements.run(
        f'SELECT {statements.column_list(Waiter)} FROM "waiter" WHERE "id" = ?', [waiter_id]
    )
    row = cursor.fetchone()
    return None if row is None else statements.instance(Waiter, row)


def waiter_by_request_key(request_key: str) -> Waiter | None:
    return Waiter.get_or_none(Waiter.request_key == request_key)


def position(waiter: Waiter, state: int) -> int:
    """How many waiting requests are served before `waiter`."""
    cursor = statements.run(
        'SELECT COUNT(*) FROM "waiter" WHERE "state" = ?'
        ' AND ("priority" > ? OR ("priority" = ? AND "id" < ?))',
        [state, waiter.priority, waiter.priority, waiter.id],
    )
    return cursor.fetchone()[0]


def end_waiter(waiter_id: int, state: int, now: float, keep_request_key: bool = False) -> None:
    """Ends a wait. Unless the wait was granted (`keep_request_key`), its
    request id is freed, so a retry with it waits anew."""
    if keep_request_key:
        statements.run(
            'UPDATE "waiter" SET "state" = ?, "end_time" = ? WHERE "id" = ?',
            [state, now, waiter_id],
        )
    else:
        statements.run(
            'UPDATE "waiter" SET "state" = ?, "end_time" = ?, "request_key" = NULL,'
            ' "request_digest" = NULL WHERE "id" = ?',
            [state, now, waiter_id],
        )


def set_blocked(waiter_id: int, index: int) -> None:
    statements.run('UPDATE "waiter" SET "blocked_index" = ? WHERE "id" = ?', [index, waiter_id])


def clear_reservations() -> None:
    """Drops every reservation; a dispatch pass makes them anew in order."""
    statements.run(
        'UPDATE "resource" SET "reserved_by" = NULL, "reserved_priority" = NULL'
        ' WHERE "reserved_by" IS NOT NULL'
    )


def reserve(resource_ids: Sequence[int], waiter_id: int, priority: int) -> None:
    """Holds free resources for a waiting request: requests behind it may not
    take them."""
    if resource_ids:
        statements.run(
            'UPDATE "resource" SET "reserved_by" = ?, "reserved_priority" = ?'
            f' WHERE "id" IN ({statements.marks(len(resource_ids))})',
            [waiter_id, priority, *resource_ids],
        )


def free_counts_by_kind(now: float) -> dict[str, int]:
    """How many usable resources of each kind no lease holds now."""
    cursor = statements.run(
        'SELECT "kind", COUNT(*) FROM "resource" WHERE "is_usable" = ? AND "lease_id" IS NULL'
        ' AND ("available_time" IS NULL OR "available_time" <= ?) GROUP BY "kind"',
        [True, now],
    )
    return dict(cursor.fetchall())


def busy(waiting_state: int) -> bool:
    """Whether a request waits, or a free resource is still reserved by
    one that waited: then a queue pass has work to do. Two index reads."""
    cursor = statements.run(
        'SELECT EXISTS (SELECT 1 FROM "waiter" WHERE "state" = ?)'
        ' OR EXISTS (SELECT 1 FROM "resource" WHERE "reserved_by" IS NOT NULL)',
        [waiting_state],
    )
    return bool(cursor.fetchone()[0])


def lowest_waiting_priority(state: int) -> int | None:
    """The lowest priority among the waiting requests, None if none wait."""
    cursor = statements.run('SELECT MIN("priority") FROM "waiter" WHERE "state" = ?', [state])
    return cursor.fetchone()[0]


def list_waiters(state: int, after: tuple[int, int] | None, limit: int) -> list[Waiter]:
    """Waiting requests in serving order, after (priority, id) of the last one
    of the previous page."""
    query = Waiter.select().where(Waiter.state == state)
    if after is not None:
        priority, waiter_id = after
        query = query.where(
            (Waiter.priority < priority) | ((Waiter.priority == priority) & (Waiter.id > waiter_id))
        )
    return list(query.order_by(Waiter.priority.desc(), Waiter.id).limit(limit))


def cancel_session_waiters(session_id: str, waiting_state: int, state: int, now: float) -> None:
    """Ends the waits of a session's requests."""
    statements.run(
        'UPDATE "waiter" SET "state" = ?, "end_time" = ?, "request_key" = NULL,'
        ' "request_digest" = NULL WHERE "session_id" = ? AND "state" = ?',
        [state, now, session_id, waiting_state],
    )


def delete_ended_waiters(ended_states: Sequence[int], cutoff: float, limit: int) -> int:
    """Inside a write transaction: deletes up to `limit` requests in
    `ended_states` that left the queue before `cutoff`; returns how many."""
    ids = [
        row.id
        for row in Waiter.select(Waiter.id)
        .where(Waiter.state.in_(list(ended_states)), Waiter.end_time < cutoff)
        .limit(limit)
    ]
    if ids:
        Waiter.delete().where(Waiter.id.in_(ids)).execute()
    return len(ids)
