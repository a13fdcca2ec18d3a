"""Storage of resources: the common columns every resource has, and the queries
on them and on each kind's table of typed fields.

A kind is a `broker.kind_data.ResourceData` subclass; its table holds only the
kind's own fields and a key to the `resource` row, so that ownership is
decided on one table whatever the kind.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
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
    # The resource whose sub-resource field names this one: it is granted
    # with it, and alone only while its parent is free.
    parent_id = peewee.BigIntegerField(null=True, index=True)
    # The kind's row, when a query joined it (`attr="data"`).
    data: ResourceData
    # The names its kind row's sub-resource fields hold, when read.
    references: dict[str, str | None]

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


def _target(kind_model: type[ResourceData] | None, path: str) -> peewee.Field:
    """The column a filter's field path ends at, whose `db_value` stores
    its values: a common field, a kind field, or one reached through a
    sub-resource field (`sim.carrier`, `sim.name`; `sim` alone is the
    sub-resource's name)."""
    head, _, rest = path.partition(".")
    if head in _COMMON_COLUMNS:
        return _COMMON_COLUMNS[head]
    field = getattr(kind_model, head)
    if not isinstance(field, peewee.ForeignKeyField):
        return field
    if not rest or rest in _COMMON_COLUMNS:
        return _COMMON_COLUMNS[rest or "name"]
    return getattr(field.rel_model, rest)


def _column_sql(kind_model: type[ResourceData] | None, path: str) -> str:
    """The SQL of a filter's field path over `r` (the resource) and `k` (its
    kind row): through a sub-resource field, a subquery of its row (NULL,
    so failing every test, when it names none)."""
    head, _, rest = path.partition(".")
    if head in _COMMON_COLUMNS:
        return f'r."{_COMMON_COLUMNS[head].column_name}"'
    field = getattr(kind_model, head)
    if not isinstance(field, peewee.ForeignKeyField):
        return f'k."{field.column_name}"'
    if not rest or rest in _COMMON_COLUMNS:
        column = _COMMON_COLUMNS[rest or "name"].column_name
        return f'(SELECT c."{column}" FROM "resource" AS c WHERE c."id" = k."{field.column_name}")'
    child = field.rel_model
    return (
        f'(SELECT s."{getattr(child, rest).column_name}" FROM "{child._meta.table_name}" AS s'
        f' WHERE s."resource_id" = k."{field.column_name}")'
    )


def _filter_params(kind_model: type[ResourceData] | None, filters: list[Filter]) -> list:
    params: list = []
    for test in filters:
        if test.test in ("prefix", "contains"):
            params.extend(test.values)
        else:
            column = _target(kind_model, test.field)
            params.extend(column.db_value(value) for value in test.values)
    return params


FREE, USABLE, EVERY = "free", "usable", "every"
"""Modes of `select_candidates`: grantable now; grantable in some state of
the inventory (held or reserved for a while); every resource, whatever its
state (to say why a request is refused)."""

PARENT, CHILD = "parent", "child"
"""Places of a kind in a tree of sub-resources (`select_candidates`): a
kind with sub-resource fields, and a kind that is some kind's sub-resource."""


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
    tree: str = "",
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
    `EVERY` takes all. In a tree of sub-resources the test of `FREE` (or
    `USABLE`) covers the whole tree: a `PARENT`'s sub-resources pass it too,
    a `CHILD`'s parent, if it has one, passes it as well (held by nobody
    else, then). Each row carries its kind's fields as `.data`, and the
    names its sub-resource fields hold as `.references`."""
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
        tree if mode != EVERY else "",
    )
    params: list = [kind]
    if groups is not None:
        params.extend(groups)
    state: list = []
    if mode != EVERY:
        state.append(True)
    if mode == FREE:
        state.extend([holder, now, now])
        if queue == "new" and rank is not None:
            state.append(rank[0])
        elif queue == "waiter" and rank is not None:
            state.extend([rank[1], rank[0], rank[0], rank[1]])
    params.extend(state)
    if tree and mode != EVERY:
        params.extend(state)
    params.extend(_filter_params(kind_model, filters))
    params.append(limit)
    return _rows(statements.run(sql, params).fetchall(), kind_model)


def _reference_fields(kind_model: type[ResourceData]) -> list[peewee.ForeignKeyField]:
    return [f for f in kind_model._meta.sorted_fields if isinstance(f, peewee.ForeignKeyField)]


@functools.cache
def _kind_columns(kind_model: type[ResourceData]) -> str:
    """The kind row's columns over `k` (its key left out: the resource's
    id), then the names its sub-resource fields hold."""
    columns = [
        f'k."{f.column_name}"' for f in statements.columns_of(kind_model) if f.name != "resource"
    ]
    names = [
        f'(SELECT c."name" FROM "resource" AS c WHERE c."id" = k."{f.column_name}")'
        for f in _reference_fields(kind_model)
    ]
    return ", ".join([*columns, *names])


def _state_sql(alias: str, mode: str, queue: str) -> list[str]:
    """The conditions of `FREE` or `USABLE` on the resource row `alias`, in
    the order `select_candidates` passes their parameters."""
    where = [f'{alias}."is_usable" = ?']
    if mode != FREE:
        return where
    where.append(
        f'({alias}."reserved_for" = \'\' OR {alias}."reserved_for" = ?'
        f' OR {alias}."reserved_until" <= ?)'
    )
    where.append(f'{alias}."lease_id" IS NULL')
    where.append(f'({alias}."available_time" IS NULL OR {alias}."available_time" <= ?)')
    if queue == "new":
        where.append(f'({alias}."reserved_by" IS NULL OR {alias}."reserved_priority" < ?)')
    elif queue == "waiter":
        where.append(
            f'({alias}."reserved_by" IS NULL OR {alias}."reserved_by" = ?'
            f' OR {alias}."reserved_priority" < ?'
            f' OR ({alias}."reserved_priority" = ? AND {alias}."reserved_by" > ?))'
        )
    return where


@functools.cache
def _candidates_sql(
    kind_model: type[ResourceData],
    shape: tuple[tuple[str, str, int, bool], ...],
    mode: str,
    queue: str,
    group_count: int | None,
    skip_locked: bool = False,
    position: str = "instr",
    tree: str = "",
) -> str:
    selected = f"{statements.column_list(Resource, 'r')}, {_kind_columns(kind_model)}"
    where = ['r."kind" = ?']
    if group_count is not None:
        visible = "r.\"group_name\" = ''"
        if group_count:
            visible += f' OR r."group_name" IN ({statements.marks(group_count)})'
        where.append(f"({visible})")
    if mode != EVERY:
        where.extend(_state_sql("r", mode, queue))
    if tree == PARENT:
        # Every sub-resource passes too (NULL counts as failing).
        passes = " AND ".join(_state_sql("c", mode, queue))
        where.append(
            'NOT EXISTS (SELECT 1 FROM "resource" AS c WHERE c."parent_id" = r."id"'
            f" AND NOT COALESCE(({passes}), FALSE))"
        )
    elif tree == CHILD:
        passes = " AND ".join(_state_sql("p", mode, queue))
        where.append(
            '(r."parent_id" IS NULL OR EXISTS (SELECT 1 FROM "resource" AS p'
            f' WHERE p."id" = r."parent_id" AND {passes}))'
        )
    for field, test, count, negate in shape:
        where.append(_test_sql(_column_sql(kind_model, field), test, count, negate, position))
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
    """Resources by name after `after_name`, optionally of one kind (then
    with its fields as `.data` and sub-resource names as `.references`), of
    no group or of one of `groups` (None: of any)."""
    position = backend_of(database_proxy).position_function
    selected = [statements.column_list(Resource, "r")]
    source = '"resource" AS r'
    where: list[str] = []
    params: list = []
    if kind_model is not None:
        selected.append(_kind_columns(kind_model))
        source += f' JOIN "{kind_model._meta.table_name}" AS k ON k."resource_id" = r."id"'
        where.append('r."kind" = ?')
        params.append(kind)
    for test in filters:
        column = _column_sql(kind_model, test.field)
        where.append(_test_sql(column, test.test, len(test.values), test.negate, position))
    params.extend(_filter_params(kind_model, filters))
    if groups is not None:
        where.append(
            "(r.\"group_name\" = ''"
            + (f' OR r."group_name" IN ({statements.marks(len(groups))}))' if groups else ")")
        )
        params.extend(groups)
    if after_name:
        where.append('r."name" > ?')
        params.append(after_name)
    sql = f"SELECT {', '.join(selected)} FROM {source}"
    if where:
        sql += f" WHERE {' AND '.join(where)}"
    sql += ' ORDER BY r."name" LIMIT ?'
    params.append(limit)
    return _rows(statements.run(sql, params).fetchall(), kind_model)


def _rows(rows: list, kind_model: type[ResourceData] | None) -> list[Resource]:
    """Resources from rows of the resource's columns, then, given its kind,
    those of `_kind_columns`."""
    width = len(statements.columns_of(Resource))
    result = []
    for row in rows:
        resource = statements.instance(Resource, row[:width])
        if kind_model is not None:
            data_width = len(statements.columns_of(kind_model)) - 1
            resource.data = statements.instance(
                kind_model, (resource.id, *row[width : width + data_width])
            )
            references = [f.name for f in _reference_fields(kind_model)]
            resource.references = dict(zip(references, row[width + data_width :], strict=True))
        result.append(resource)
    return result


def reference_names(
    kind_model: type[ResourceData], rows: dict[int, ResourceData]
) -> dict[int, dict[str, str | None]]:
    """The names the sub-resource fields of some kind rows hold, by
    resource id: one statement, none for a kind without such fields."""
    fields = _reference_fields(kind_model)
    if not fields:
        return {resource_id: {} for resource_id in rows}
    ids = {row.__data__.get(f.name) for row in rows.values() for f in fields} - {None}
    names = {}
    if ids:
        cursor = statements.run(
            f'SELECT "id", "name" FROM "resource" WHERE "id" IN ({statements.marks(len(ids))})',
            sorted(ids),
        )
        names = dict(cursor.fetchall())
    return {
        resource_id: {f.name: names.get(row.__data__.get(f.name)) for f in fields}
        for resource_id, row in rows.items()
    }


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


def names_of(resource_ids: Iterable[int | None]) -> dict[int, str]:
    """The names of some resources, by id: one statement, none for no ids."""
    ids = sorted({resource_id for resource_id in resource_ids if resource_id is not None})
    if not ids:
        return {}
    cursor = statements.run(
        f'SELECT "id", "name" FROM "resource" WHERE "id" IN ({statements.marks(len(ids))})', ids
    )
    return dict(cursor.fetchall())


def rows_with_data(kind_model: type[ResourceData], resource_ids: Sequence[int]) -> list[Resource]:
    """Resources of one kind by id, with their kind rows, in id order."""
    if not resource_ids:
        return []
    cursor = statements.run(
        f"SELECT {statements.column_list(Resource, 'r')}, {_kind_columns(kind_model)}"
        f' FROM "resource" AS r JOIN "{kind_model._meta.table_name}" AS k'
        f' ON k."resource_id" = r."id" WHERE r."id" IN ({statements.marks(len(resource_ids))})'
        ' ORDER BY r."id"',
        list(resource_ids),
    )
    return _rows(cursor.fetchall(), kind_model)


def set_parent(child_ids: Sequence[int], parent_id: int | None) -> None:
    """Records whose sub-resources these resources are (None: nobody's)."""
    if child_ids:
        marks = statements.marks(len(child_ids))
        statements.run(
            f'UPDATE "resource" SET "parent_id" = ? WHERE "id" IN ({marks})',
            [parent_id, *child_ids],
        )


def orphan_children(parent_id: int, keep: Sequence[int] = ()) -> None:
    """The parent no longer names these sub-resources: all but `keep`."""
    sql = 'UPDATE "resource" SET "parent_id" = NULL WHERE "parent_id" = ?'
    if keep:
        sql += f' AND "id" NOT IN ({statements.marks(len(keep))})'
    statements.run(sql, [parent_id, *keep])


def relatives(resource_ids: Sequence[int]) -> list[Freed]:
    """The parents and sub-resources of some resources, as the queue sees
    them: a change of one may serve a request waiting for the other."""
    if not resource_ids:
        return []
    marks = statements.marks(len(resource_ids))
    cursor = statements.run(
        f'SELECT "id", "kind", "name", {WANTED} FROM "resource"'
        f' WHERE "id" IN (SELECT "parent_id" FROM "resource" WHERE "id" IN ({marks}))'
        f' OR "parent_id" IN ({marks})',
        [*resource_ids, *resource_ids],
    )
    return [(row[0], row[1], row[2], bool(row[3])) for row in cursor.fetchall()]


def children_rows(parent_ids: Sequence[int]) -> dict[int, list[Resource]]:
    """The sub-resources of some resources (without their kinds' fields),
    by parent id."""
    result: dict[int, list[Resource]] = {}
    if parent_ids:
        query = Resource.select().where(Resource.parent_id.in_(list(parent_ids)))
        for row in query.order_by(Resource.id):
            result.setdefault(row.parent_id or 0, []).append(row)
    return result


def parent_rows(parent_ids: Sequence[int]) -> dict[int, Resource]:
    """Some resources by id, without their kinds' fields."""
    if not parent_ids:
        return {}
    return {row.id: row for row in Resource.select().where(Resource.id.in_(list(parent_ids)))}


def counts_by_kind() -> dict[str, tuple[int, int, int]]:
    """For each kind: its resources, those held, those out of service."""
    cursor = statements.run(
        'SELECT "kind", COUNT(*), COUNT("lease_id"), SUM(CASE WHEN "is_usable" THEN 0 ELSE 1 END)'
        ' FROM "resource" GROUP BY "kind"',
        [],
    )
    return {row[0]: (row[1], row[2], int(row[3] or 0)) for row in cursor.fetchall()}
