"""Storage of resources: the common columns every resource has, and the queries
on them and on each kind's table of typed fields.

A kind is a `broker.kind_data.ResourceData` subclass; its table holds only the
kind's own fields and a key to the `resource` row, so that ownership is
decided on one table whatever the kind.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import peewee

from broker.kind_data import ResourceData
from broker.models import statements
from broker.models.backend import backend_of
from broker.models.base import BaseModel
from broker.models.database import database_proxy
from broker.models.queue import WANTED, Freed


class Resource(BaseModel):
    """One resource: name, kind, usability, and who holds it (for an ownable
    kind, the one active lease; `fencing_token` is the number of its latest
    grant and only grows)."""

    id = peewee.AutoField()
    name = peewee.CharField(max_length=128, unique=True)
    kind = peewee.CharField(max_length=128, index=True)
    is_usable = peewee.BooleanField(default=True)
    comment = peewee.TextField(default="")
    group = peewee.CharField(max_length=128, default="", column_name="group_name")
    reserved_for = peewee.CharField(max_length=128, default="")
    owner = peewee.CharField(max_length=128, default="")
    lease_id = peewee.CharField(max_length=36, null=True, index=True)
    fencing_token = peewee.BigIntegerField(default=0)
    version = peewee.IntegerField(default=1)
    create_time = peewee.DoubleField()
    update_time = peewee.DoubleField()
    # The waiting request whose best partial assignment uses this free
    # resource, and its priority: requests behind it may not take it.
    reserved_by = peewee.BigIntegerField(null=True, index=True)
    reserved_priority = peewee.IntegerField(null=True)
    # Not granted before this time: the lock-delay after its holder vanished.
    available_time = peewee.DoubleField(null=True, index=True)
    # When the reservation for `reserved_for` ends (None: when removed).
    reserved_until = peewee.DoubleField(null=True, index=True)
    reservation_reason = peewee.TextField(default="")
    # Why it is out of service (`is_usable` false): maintenance, quarantine.
    service_reason = peewee.TextField(default="")
    # Setups reported failed in a row; a success resets it.
    setup_failures = peewee.IntegerField(default=0)
    # When it was last granted (0: never): free ones go least recent first.
    last_grant_time = peewee.DoubleField(default=0.0)
    # The kind's row, when a query joined it (`attr="data"`).
    data: ResourceData

    class Meta:
        # The candidate query: resources of a kind, free ones first, least
        # recently granted first.
        indexes = ((("kind", "lease_id", "last_grant_time", "id"), False),)


class Filter(NamedTuple):
    """A test of one field: common fields (`name`, `group`, `comment`) are
    the resource's own, others the kind table's. `test` is the contract's
    name of it (`equals`, `any_of`, `greater_than`, `at_least`,
    `less_than`, `at_most`, `prefix`, `contains`); `negate` passes the
    resources it fails, those whose field is unset included."""

    field: str
    values: tuple
    test: str = "equals"
    negate: bool = False


_COMMON_COLUMNS = {"name": Resource.name, "group": Resource.group, "comment": Resource.comment}
_COMPARED = {"greater_than": ">", "at_least": ">=", "less_than": "<", "at_most": "<="}


def _test_sql(column: str, test: str, count: int, negate: bool, position: str) -> str:
    """The SQL of one filter on `column`, taking `count` parameters (a text
    test takes its text once; `position` is the backend's function finding
    it, 1-based, 0 when absent)."""
    if test in _COMPARED:
        sql = f"{column} {_COMPARED[test]} ?"
    elif test == "prefix":
        sql = f"{position}({column}, ?) = 1"
    elif test == "contains":
        sql = f"{position}({column}, ?) > 0"
    else:
        sql = f"{column} = ?" if count == 1 else f"{column} IN ({statements.marks(count)})"
    return f"({column} IS NULL OR NOT ({sql}))" if negate else sql


def _where_filters(query, kind_model: type[ResourceData] | None, filters: list[Filter]):
    position = backend_of(database_proxy).position_function
    for test in filters:
        column = _COMMON_COLUMNS.get(test.field) or getattr(kind_model, test.field)
        query = query.where(_expression(column, test, position))
    return query


def _expression(column: peewee.Field, test: Filter, position: str) -> peewee.Expression:
    """`_test_sql` as a peewee expression, for queries peewee writes."""
    first = test.values[0]
    if test.test in _COMPARED:
        expression = peewee.Expression(column, _COMPARED[test.test], first)
    elif test.test == "prefix":
        expression = getattr(peewee.fn, position)(column, first) == 1
    elif test.test == "contains":
        expression = getattr(peewee.fn, position)(column, first) > 0
    elif len(test.values) == 1:
        expression = column == first
    else:
        expression = column.in_(list(test.values))
    return (column.is_null() | ~expression) if test.negate else expression


def _with_data(query, kind_model: type[ResourceData]):
    return query.join(kind_model, on=(kind_model.resource == Resource.id), attr="data")


FREE, USABLE, EVERY = "free", "usable", "every"
"""Modes of `select_candidates`: grantable now; grantable in some state of
the inventory (held or reserved for a while); every resource, whatever its
state (to say why a request is refused)."""


def select_candidates(
    kind_model: type[ResourceData],
    kind: str,
    filters: list[Filter],
    *,
    holder: str,
    mode: str,
    limit: int,
    now: float = 0.0,
    rank: tuple[int, int | None] | None = None,
    groups: tuple[str, ...] | None = None,
) -> list[Resource]:
    """Resources of a kind that satisfy the filters and are visible to a
    caller in `groups` (None: every group), at most `limit`. `FREE` ones may
    go to `holder` now, least recently granted first: usable, reserved for
    nobody else (or no longer), held by no active lease, past any
    lock-delay and, given the `rank` of the request asking (its priority
    and waiter id, None for a newcomer), not reserved by a waiting request
    ranking ahead of it. `USABLE` ones may go to it once
    freed: usable, whoever they are held or reserved for (a reservation
    ends, at its end or when an administrator removes it).
    `EVERY` takes all. Each row carries its kind's fields as `.data`."""
    shape = tuple((f.field, f.test, len(f.values), f.negate) for f in filters)
    queue = "" if mode != FREE or rank is None else ("waiter" if rank[1] is not None else "new")
    # On PostgreSQL free candidates are locked, and those another grant has
    # locked skipped: two grants of one kind at once pick different ones.
    skip_locked = mode == FREE and backend_of(database_proxy).row_locks
    sql = _candidates_sql(
        kind_model,
        shape,
        mode,
        queue,
        None if groups is None else len(groups),
        skip_locked,
        backend_of(database_proxy).position_function,
    )
    params: list = [kind]
    if groups is not None:
        params.extend(groups)
    if mode != EVERY:
        params.append(True)
    if mode == FREE:
        params.extend([holder, now, now])
        if queue == "new" and rank is not None:
            params.append(rank[0])
        elif queue == "waiter" and rank is not None:
            params.extend([rank[1], rank[0], rank[0], rank[1]])
    for test in filters:
        column = _COMMON_COLUMNS.get(test.field) or getattr(kind_model, test.field)
        if test.test in ("prefix", "contains"):
            params.extend(test.values)
        else:
            params.extend(column.db_value(value) for value in test.values)
    params.append(limit)
    width = len(statements.columns_of(Resource))
    rows = []
    for row in statements.run(sql, params).fetchall():
        resource = statements.instance(Resource, row[:width])
        resource.data = statements.instance(kind_model, (resource.id, *row[width:]))
        rows.append(resource)
    return rows


@functools.cache
def _candidates_sql(
    kind_model: type[ResourceData],
    shape: tuple[tuple[str, str, int, bool], ...],
    mode: str,
    queue: str,
    group_count: int | None,
    skip_locked: bool = False,
    position: str = "instr",
) -> str:
    kind_columns = [f for f in statements.columns_of(kind_model) if f.name != "resource"]
    selected = ", ".join(
        [statements.column_list(Resource, "r"), *(f'k."{f.column_name}"' for f in kind_columns)]
    )
    where = ['r."kind" = ?']
    if group_count is not None:
        visible = "r.\"group_name\" = ''"
        if group_count:
            visible += f' OR r."group_name" IN ({statements.marks(group_count)})'
        where.append(f"({visible})")
    if mode != EVERY:
        where.append('r."is_usable" = ?')
    if mode == FREE:
        where.append('(r."reserved_for" = \'\' OR r."reserved_for" = ? OR r."reserved_until" <= ?)')
        where.append('r."lease_id" IS NULL')
        where.append('(r."available_time" IS NULL OR r."available_time" <= ?)')
        if queue == "new":
            where.append('(r."reserved_by" IS NULL OR r."reserved_priority" < ?)')
        elif queue == "waiter":
            where.append(
                '(r."reserved_by" IS NULL OR r."reserved_by" = ? OR r."reserved_priority" < ?'
                ' OR (r."reserved_priority" = ? AND r."reserved_by" > ?))'
            )
    for field, test, count, negate in shape:
        common = _COMMON_COLUMNS.get(field)
        column = (
            f'r."{common.column_name}"'
            if common
            else f'k."{getattr(kind_model, field).column_name}"'
        )
        where.append(_test_sql(column, test, count, negate, position))
    order = 'r."last_grant_time", r."id"' if mode == FREE else 'r."id"'
    return (
        f'SELECT {selected} FROM "resource" AS r'
        f' JOIN "{kind_model._meta.table_name}" AS k ON k."resource_id" = r."id"'
        f" WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
        + (" FOR UPDATE OF r SKIP LOCKED" if skip_locked else "")
    )


def get_resource(name: str) -> Resource | None:
    """The resource row by name, without its kind's fields."""
    return Resource.get_or_none(Resource.name == name)


def kind_data(kind_model: type[ResourceData], resource_ids: list[int]) -> dict[int, ResourceData]:
    """The kind rows of some resources, by resource id."""
    if not resource_ids:
        return {}
    rows = kind_model.select().where(kind_model.resource.in_(resource_ids))
    return {row.resource: row for row in rows}


def list_resources(
    kind: str | None,
    kind_model: type[ResourceData] | None,
    filters: list[Filter],
    after_name: str,
    limit: int,
    groups: tuple[str, ...] | None = None,
) -> list[Resource]:
    """Resources by name after `after_name`, optionally of one kind, of no
    group or of one of `groups` (None: of any)."""
    query = Resource.select(Resource)
    if kind_model is not None:
        query = _with_data(Resource.select(Resource, kind_model), kind_model).where(
            Resource.kind == kind
        )
    query = _where_filters(query, kind_model, filters)
    if groups is not None:
        query = query.where((Resource.group == "") | Resource.group.in_(list(groups)))
    if after_name:
        query = query.where(Resource.name > after_name)
    return list(query.order_by(Resource.name).limit(limit))


def insert_resource(values: dict, kind_model: type[ResourceData], fields: dict) -> Resource:
    """Stores a new resource and its kind row."""
    resource = Resource.create(**values)
    kind_model.insert(resource=resource.id, **fields).execute()
    return resource


def update_resource(resource_id: int, version: int, values: dict) -> bool:
    """Changes common columns if the version is still `version`, bumping it;
    False when someone else changed the resource first."""
    changed = (
        Resource.update(version=Resource.version + 1, **values)
        .where((Resource.id == resource_id) & (Resource.version == version))
        .execute()
    )
    return changed == 1


def update_kind_data(kind_model: type[ResourceData], resource_id: int, fields: dict) -> None:
    """Changes a resource's typed fields."""
    if fields:
        kind_model.update(**fields).where(kind_model.resource == resource_id).execute()


def delete_free_resource(resource_id: int, version: int | None) -> bool:
    """Deletes a resource that no lease holds (and, if given, still at
    `version`); its kind row goes with it."""
    query = Resource.delete().where((Resource.id == resource_id) & Resource.lease_id.is_null())
    if version is not None:
        query = query.where(Resource.version == version)
    return query.execute() == 1


def delay_until(resource_ids: list[int], until: float) -> None:
    """Keeps resources from being granted before `until` (lock-delay)."""
    Resource.update(available_time=until).where(Resource.id.in_(resource_ids)).execute()


def clear_passed_delays(now: float) -> list[Freed]:
    """Ends the lock-delays that have passed; returns the resources they kept."""
    cursor = statements.run(
        'UPDATE "resource" SET "available_time" = NULL WHERE "available_time" <= ?'
        f' RETURNING "id", "kind", "name", {WANTED}',
        [now],
    )
    return [(row[0], row[1], row[2], bool(row[3])) for row in cursor.fetchall()]


def end_passed_reservations(now: float) -> list[tuple[Freed, str]]:
    """Removes the reservations whose time is up; returns each resource and
    whom it was reserved for."""
    ended = statements.run(
        f'SELECT "id", "kind", "name", {WANTED}, "reserved_for" FROM "resource"'
        ' WHERE "reserved_until" <= ?',
        [now],
    ).fetchall()
    if ended:
        statements.run(
            'UPDATE "resource" SET "reserved_for" = \'\', "reserved_until" = NULL,'
            f' "reservation_reason" = \'\' WHERE "id" IN ({statements.marks(len(ended))})',
            [row[0] for row in ended],
        )
    return [((row[0], row[1], row[2], bool(row[3])), row[4]) for row in ended]


def within_reach(name: str) -> list[Freed]:
    """A resource as the queue sees it after a change (none if it is gone)."""
    cursor = statements.run(
        f'SELECT "id", "kind", "name", {WANTED} FROM "resource" WHERE "name" = ?', [name]
    )
    return [(row[0], row[1], row[2], bool(row[3])) for row in cursor.fetchall()]


def due(active_state: int, now: float) -> tuple[bool, bool]:
    """Whether any active lease is past its TTL, and whether a lock-delay or
    a reservation ended that no queue pass has seen yet: one statement, so
    an acquire that finds nothing due pays one look."""
    cursor = statements.run(
        'SELECT EXISTS (SELECT 1 FROM "lease" WHERE "state" = ? AND "expire_time" <= ?),'
        ' EXISTS (SELECT 1 FROM "resource" WHERE "available_time" <= ?),'
        ' EXISTS (SELECT 1 FROM "resource" WHERE "reserved_until" <= ?)',
        [active_state, now, now, now],
    )
    leases, delays, reservations = cursor.fetchone()
    return bool(leases), bool(delays or reservations)


def any_restricted() -> bool:
    """Whether any resource is reserved for a particular holder or belongs
    to a group: then who asks matters, not only what."""
    cursor = statements.run(
        'SELECT 1 FROM "resource" WHERE "reserved_for" <> ? OR "group_name" <> ? LIMIT 1',
        ["", ""],
    )
    return cursor.fetchone() is not None


def count_setup(resource_id: int, ok: bool) -> int:
    """Counts a reported setup of a resource: a failure adds one to its
    failures in a row, a success resets them; returns the count."""
    change = "0" if ok else '"setup_failures" + 1'
    cursor = statements.run(
        f'UPDATE "resource" SET "setup_failures" = {change} WHERE "id" = ?'
        ' RETURNING "setup_failures"',
        [resource_id],
    )
    row = cursor.fetchone()
    return 0 if row is None else row[0]


def take_out_of_service(resource_id: int, reason: str, now: float) -> None:
    """Makes a resource unusable, saying why, whatever its version."""
    Resource.update(
        is_usable=False, service_reason=reason, update_time=now, version=Resource.version + 1
    ).where(Resource.id == resource_id).execute()
