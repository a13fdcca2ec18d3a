"""Storage of the wait queue: requests waiting for resources, in the order
they will be served, and the reservations their waits hold on free resources.

A transaction that adds or ends waiting requests is noted (`changed` after
its commit, on the committing thread) and, on PostgreSQL, announced to the
other brokers: their waiting calls' places in the queue may have moved."""

from __future__ import annotations

import json
from collections.abc import Sequence

import peewee

from broker.models import notify, statements
from broker.models.base import BaseModel
from broker.models.transactions import after_commit, pending

# Positions read per statement: below every backend's limit of parameters.
POSITIONS_BATCH = 10_000


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
        indexes = (
            (("state", "priority", "id"), False),
            (("state", "end_time"), False),
            (("state", "deadline"), False),
            (("principal", "state"), False),
        )


class WaiterNeed(BaseModel):
    """What a waiting request could use, as keys a freed resource is looked up
    by: its kind, and a name where a requirement names resources ('' where it
    does not). Only waiting requests have keys, so a release finds the
    requests it could serve without reading the others. `priority` repeats
    the waiter's, so the keys of one kind and name are read in serving order
    straight from the index."""

    waiter = peewee.ForeignKeyField(Waiter, on_delete="CASCADE", backref="+")
    waiter_id: int
    kind = peewee.CharField(max_length=128)
    name = peewee.CharField(max_length=128, default="")
    priority = peewee.IntegerField(default=0)

    class Meta:
        indexes = ((("kind", "name", "priority", "waiter"), False),)


def groups_of(waiter: Waiter) -> tuple[str, ...] | None:
    """The groups whose resources a waiting request may be granted."""
    return None if waiter.groups is None else tuple(json.loads(waiter.groups))


# The after-commit key of a transaction that changed the waiting requests.
QUEUE_CHANGE = "queue"


def _mark_changed() -> None:
    """Inside a write transaction that added or ended waiting requests."""
    if after_commit(QUEUE_CHANGE, _nothing):
        notify.announce_queue_change()


def _nothing() -> None:
    pass


def changing() -> bool:
    """Whether this write transaction added or ended waiting requests."""
    return pending(QUEUE_CHANGE)


def insert_waiter(values: dict) -> int:
    """Stores a waiting request; returns its id."""
    _mark_changed()
    return Waiter.insert(**values).execute()


def need_keys(requirements: str) -> set[tuple[str, str]]:
    """The keys of a waiting request's requirements (as stored, JSON): each
    requirement's kind with each name it may take, or with '' if it names
    none (a name tested otherwise than equal to one of some values, or
    negated, names none)."""
    keys: set[tuple[str, str]] = set()
    for requirement in json.loads(requirements):
        names = next(
            (
                c["values"]
                for c in requirement["constraints"]
                if c["field"] == "name"
                and c.get("test", "equals") in ("equals", "any_of")
                and not c.get("negate", False)
            ),
            None,
        )
        for name in names or ("",):
            keys.add((requirement["kind"], str(name)))
    return keys


def insert_needs(waiter_id: int, priority: int, keys: set[tuple[str, str]]) -> None:
    """Indexes a waiting request by what it could use."""
    if keys:
        statements.insert_rows(
            WaiterNeed,
            [
                {"waiter": waiter_id, "kind": kind, "name": name, "priority": priority}
                for kind, name in sorted(keys)
            ],
        )


def drop_needs(waiter_ids: Sequence[int]) -> None:
    """Forgets what requests that left the queue could use."""
    if waiter_ids:
        statements.run(
            f'DELETE FROM "waiter_need" WHERE "waiter_id" IN ({statements.marks(len(waiter_ids))})',
            list(waiter_ids),
        )


def index_unindexed(waiting_state: int) -> int:
    """Indexes the waiting requests that have no keys yet (queued by a broker
    that kept none); returns how many."""
    rows = statements.run(
        'SELECT "id", "priority", "requirements" FROM "waiter" WHERE "state" = ?'
        ' AND NOT EXISTS (SELECT 1 FROM "waiter_need" n WHERE n."waiter_id" = "waiter"."id")',
        [waiting_state],
    ).fetchall()
    for waiter_id, priority, requirements in rows:
        insert_needs(waiter_id, priority, need_keys(requirements))
    return len(rows)


Rank = tuple[int, int]
"""Where a waiting request stands: (priority, id); a higher priority, then
a lower id, is served first."""


def next_wanting(keys: set[tuple[str, str]], after: Rank | None, state: int) -> Waiter | None:
    """The first waiting request served after `after` (None: from the head)
    that has one of `keys`, or whose requirement of such a kind names no
    resource."""
    by_kind: dict[str, set[str]] = {}
    for kind, name in keys:
        by_kind.setdefault(kind, {""}).add(name)
    terms: list[str] = []
    params: list[object] = []
    for kind, names in sorted(by_kind.items()):
        terms.append(f'(n."kind" = ? AND n."name" IN ({statements.marks(len(names))}))')
        params.extend([kind, *sorted(names)])
    rank = ""
    if after is not None:
        rank = ' AND (n."priority" < ? OR (n."priority" = ? AND n."waiter_id" > ?))'
        params.extend([after[0], after[0], after[1]])
    params.append(state)
    cursor = statements.run(
        f'SELECT {statements.column_list(Waiter, "w")} FROM "waiter_need" n'
        ' JOIN "waiter" w ON w."id" = n."waiter_id"'
        f' WHERE ({" OR ".join(terms)}){rank} AND w."state" = ?'
        ' ORDER BY n."priority" DESC, n."waiter_id" LIMIT 1',
        params,
    )
    row = cursor.fetchone()
    return None if row is None else statements.instance(Waiter, row)


def waiters_of(principal: str, state: int) -> list[Waiter]:
    """A principal's waiting requests, in serving order."""
    cursor = statements.run(
        f'SELECT {statements.column_list(Waiter)} FROM "waiter" WHERE "principal" = ?'
        ' AND "state" = ? ORDER BY "priority" DESC, "id"',
        [principal, state],
    )
    return [statements.instance(Waiter, row) for row in cursor.fetchall()]


def get_waiters(waiter_ids: Sequence[int]) -> list[Waiter]:
    """Waiting requests by id, in serving order."""
    if not waiter_ids:
        return []
    cursor = statements.run(
        f'SELECT {statements.column_list(Waiter)} FROM "waiter"'
        f' WHERE "id" IN ({statements.marks(len(waiter_ids))}) ORDER BY "priority" DESC, "id"',
        list(waiter_ids),
    )
    return [statements.instance(Waiter, row) for row in cursor.fetchall()]


def timed_out(state: int, now: float) -> list[int]:
    """The waiting requests whose deadline has passed."""
    cursor = statements.run(
        'SELECT "id" FROM "waiter" WHERE "state" = ? AND "deadline" <= ?', [state, now]
    )
    return [row[0] for row in cursor.fetchall()]


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


def positions(waiter_ids: Sequence[int], state: int) -> dict[int, int]:
    """How many waiting requests are served before each of `waiter_ids`
    that still waits (those that do not are left out): one statement for
    up to `POSITIONS_BATCH` of them, however long the queue."""
    found: dict[int, int] = {}
    ids = list(waiter_ids)
    for start in range(0, len(ids), POSITIONS_BATCH):
        batch = ids[start : start + POSITIONS_BATCH]
        cursor = statements.run(
            'SELECT "id", "ahead" FROM (SELECT "id",'
            ' ROW_NUMBER() OVER (ORDER BY "priority" DESC, "id") - 1 AS "ahead"'
            ' FROM "waiter" WHERE "state" = ?) AS "ranked"'
            f' WHERE "id" IN ({statements.marks(len(batch))})',
            [state, *batch],
        )
        found.update(cursor.fetchall())
    return found


def end_waiter(waiter_id: int, state: int, now: float, keep_request_key: bool = False) -> None:
    """Ends a wait and forgets what it could use. Unless the wait was
    granted (`keep_request_key`), its request id is freed, so a retry with
    it waits anew."""
    _mark_changed()
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
    drop_needs([waiter_id])


def set_blocked(waiter_id: int, index: int) -> None:
    statements.run('UPDATE "waiter" SET "blocked_index" = ? WHERE "id" = ?', [index, waiter_id])


def clear_reservations() -> None:
    """Drops every reservation; a full queue pass makes them anew in order."""
    statements.run(
        'UPDATE "resource" SET "reserved_by" = NULL, "reserved_priority" = NULL'
        ' WHERE "reserved_by" IS NOT NULL'
    )


Freed = tuple[int, str, str, bool]
"""A resource that came within reach: id, kind, name, and whether a waiting
request has a key it matches."""

# Whether a waiting request has a key a resource row `r` matches.
WANTED = (
    'EXISTS (SELECT 1 FROM "waiter_need" n WHERE n."kind" = "resource"."kind"'
    ' AND n."name" IN (\'\', "resource"."name"))'
)


def unreserve(waiter_ids: Sequence[int], keep: Sequence[int] = ()) -> list[Freed]:
    """Drops the reservations of these waiting requests, but on `keep`;
    returns the resources so let go."""
    if not waiter_ids:
        return []
    keeping = f' AND "id" NOT IN ({statements.marks(len(keep))})' if keep else ""
    cursor = statements.run(
        'UPDATE "resource" SET "reserved_by" = NULL, "reserved_priority" = NULL'
        f' WHERE "reserved_by" IN ({statements.marks(len(waiter_ids))}){keeping}'
        f' RETURNING "id", "kind", "name", {WANTED}',
        [*waiter_ids, *keep],
    )
    return [(row[0], row[1], row[2], bool(row[3])) for row in cursor.fetchall()]


def reserve(resource_ids: Sequence[int], waiter_id: int, priority: int) -> None:
    """Holds free resources for a waiting request: requests behind it may not
    take them."""
    if resource_ids:
        statements.run(
            'UPDATE "resource" SET "reserved_by" = ?, "reserved_priority" = ?'
            f' WHERE "id" IN ({statements.marks(len(resource_ids))})',
            [waiter_id, priority, *resource_ids],
        )


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


def cancel_session_waiters(
    session_id: str, waiting_state: int, state: int, now: float
) -> list[int]:
    """Ends the waits of a session's requests; returns their ids."""
    cursor = statements.run(
        'UPDATE "waiter" SET "state" = ?, "end_time" = ?, "request_key" = NULL,'
        ' "request_digest" = NULL WHERE "session_id" = ? AND "state" = ? RETURNING "id"',
        [state, now, session_id, waiting_state],
    )
    ended = [row[0] for row in cursor.fetchall()]
    if ended:
        _mark_changed()
    drop_needs(ended)
    return ended


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
        WaiterNeed.delete().where(WaiterNeed.waiter.in_(ids)).execute()
        Waiter.delete().where(Waiter.id.in_(ids)).execute()
    return len(ids)


def waiting_by_kind() -> dict[str, int]:
    """How many waiting requests could use each kind (only waiting
    requests have keys)."""
    cursor = statements.run(
        'SELECT "kind", COUNT(DISTINCT "waiter_id") FROM "waiter_need" GROUP BY "kind"', []
    )
    return dict(cursor.fetchall())
