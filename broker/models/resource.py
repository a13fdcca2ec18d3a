"""Storage of resources: the common columns every resource has, and the base of
each kind's table of typed fields.

A kind is a `ResourceData` subclass; its table holds only the kind's own fields
and a key to the `resource` row, so that ownership is decided on one table
whatever the kind.
"""

from __future__ import annotations

from typing import ClassVar

import peewee

from broker.models.base import BaseModel


class Resource(BaseModel):
    """One resource: name, kind, usability, and who holds it (for an ownable
    kind, the one active lease; `fencing_token` is the number of its latest
    grant and only grows)."""

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

    class Meta:
        # The candidate query: usable resources of a kind, free ones first.
        indexes = ((("kind", "lease_id", "id"), False),)


class ResourceData(BaseModel):
    """Base of a kind's typed fields, declared as in the Rotest tutorial::

        class CalculatorData(ResourceData):
            '''A calculator reachable over RPyC.'''
            ip_address = IPAddressField(help_text="Where its RPyC service listens.")

    The kind's name is the class name without its `Data` suffix (`Calculator`)
    unless `KIND` says otherwise. `OWNABLE = False` makes a kind whose
    resources any number of leases may hold at once. Fields are peewee fields
    of the types `broker.domain.kinds` knows; `help_text` documents them over
    the API, `null=True` or a `default` makes them optional.
    """

    OWNABLE: ClassVar[bool] = True
    KIND: ClassVar[str | None] = None

    resource = peewee.ForeignKeyField(Resource, primary_key=True, on_delete="CASCADE", backref="+")

    @classmethod
    def kind_name(cls) -> str:
        """The name clients use for this kind."""
        if cls.KIND:
            return cls.KIND
        name = cls.__name__
        return name[: -len("Data")] if name.endswith("Data") and len(name) > 4 else name


Filter = tuple[str, tuple]
"""A field name and the values it may equal; common fields (`name`, `group`,
`comment`) are the resource's own, others the kind table's."""

_COMMON_COLUMNS = {"name": Resource.name, "group": Resource.group, "comment": Resource.comment}


def _where_filters(query, kind_model: type[ResourceData] | None, filters: list[Filter]):
    for field, values in filters:
        column = _COMMON_COLUMNS.get(field)
        if column is None:
            column = getattr(kind_model, field)
        query = query.where(column == values[0] if len(values) == 1 else column.in_(list(values)))
    return query


def _with_data(query, kind_model: type[ResourceData]):
    return query.join(kind_model, on=(kind_model.resource == Resource.id), attr="data")


def select_candidates(
    kind_model: type[ResourceData],
    kind: str,
    filters: list[Filter],
    *,
    holder: str,
    free_only: bool,
    limit: int,
) -> list[Resource]:
    """Usable resources of a kind that satisfy the filters and may go to
    `holder`, in id order, at most `limit`; `free_only` leaves out those an
    active lease holds. Each row carries its kind's fields as `.data`."""
    query = _with_data(Resource.select(Resource, kind_model), kind_model).where(
        (Resource.kind == kind)
        & (Resource.is_usable == True)  # noqa: E712 (SQL, not Python)
        & ((Resource.reserved_for == "") | (Resource.reserved_for == holder))
    )
    if free_only:
        query = query.where(Resource.lease_id.is_null())
    query = _where_filters(query, kind_model, filters)
    return list(query.order_by(Resource.id).limit(limit))


def get_resource(name: str) -> Resource | None:
    """The resource row by name, without its kind's fields."""
    return Resource.get_or_none(Resource.name == name)


def kind_data(kind_model: type[ResourceData], resource_ids: list[int]) -> dict[int, ResourceData]:
    """The kind rows of some resources, by resource id."""
    if not resource_ids:
        return {}
    rows = kind_model.select().where(kind_model.resource.in_(resource_ids))
    return {row.resource_id: row for row in rows}


def list_resources(
    kind: str | None,
    kind_model: type[ResourceData] | None,
    filters: list[Filter],
    after_name: str,
    limit: int,
) -> list[Resource]:
    """Resources by name after `after_name`, optionally of one kind."""
    query = Resource.select(Resource)
    if kind_model is not None:
        query = _with_data(Resource.select(Resource, kind_model), kind_model).where(
            Resource.kind == kind
        )
    query = _where_filters(query, kind_model, filters)
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
