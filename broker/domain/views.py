"""Building `ResourceView`s from stored rows, and the JSON snapshot of a
resource kept with each grant."""

from __future__ import annotations

import datetime
import json

from broker.domain.kinds import Kind
from broker.domain.values import FieldSpec, FieldType, ResourceView, Scalar
from broker.kind_data import ResourceData
from broker.models.resource import Resource


def etag_of(resource: Resource) -> str:
    return f"v{resource.version}"


def resource_view(
    resource: Resource,
    data: ResourceData | None,
    kind: Kind | None,
    lease_ids: tuple[str, ...] | None = None,
    parent: str = "",
) -> ResourceView:
    """The view of a stored resource. `lease_ids` defaults to the one lease
    of an ownable resource; shared kinds pass theirs. Sub-resource fields
    show the names the row's `references` hold; `parent` is the name of the
    resource it is a sub-resource of."""
    fields = {}
    if data is not None and kind is not None:
        references = getattr(resource, "references", {})
        fields = {
            spec.name: (
                references.get(spec.name)
                if spec.type == FieldType.REFERENCE
                else _public(getattr(data, spec.name), spec)
            )
            for spec in kind.spec.fields
        }
    if lease_ids is None:
        lease_ids = (resource.lease_id,) if resource.lease_id else ()
    return ResourceView(
        name=resource.name,
        kind=resource.kind,
        fields=fields,
        is_usable=resource.is_usable,
        comment=resource.comment,
        group=resource.group,
        reserved_for=resource.reserved_for,
        owner=resource.owner,
        lease_ids=tuple(lease_ids),
        fencing_token=resource.fencing_token,
        etag=etag_of(resource),
        create_time=resource.create_time,
        update_time=resource.update_time,
        reserved_until=resource.reserved_until if resource.reserved_for else None,
        reservation_reason=resource.reservation_reason,
        service_reason=resource.service_reason,
        setup_failures=resource.setup_failures,
        last_grant_time=resource.last_grant_time or None,
        parent=parent,
    )


def _public(value: Scalar | None, spec: FieldSpec) -> Scalar | None:
    """A stored value as callers see it: a date-time in UTC, with its zone."""
    if spec.type == FieldType.DATE_TIME and isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.UTC)
    return value


# How a snapshot's JSON keeps a date-time field's value.
_TIME_KEY = "$time"


def _encode(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return {_TIME_KEY: value.isoformat()}
    raise TypeError(f"{type(value).__name__} is not a field value")


def _decode(item: dict) -> object:
    if len(item) == 1 and _TIME_KEY in item:
        return datetime.datetime.fromisoformat(item[_TIME_KEY])
    return item


def snapshot(view: ResourceView) -> str:
    """The JSON kept with a grant: the resource as it was granted."""
    kept = {"parent": view.parent} if view.parent else {}
    return json.dumps(
        {
            **kept,
            "kind": view.kind,
            "fields": view.fields,
            "is_usable": view.is_usable,
            "comment": view.comment,
            "group": view.group,
            "reserved_for": view.reserved_for,
            "create_time": view.create_time,
            "update_time": view.update_time,
            "etag": view.etag,
        },
        separators=(",", ":"),
        default=_encode,
    )


def from_snapshot(name: str, text: str, fencing_token: int) -> ResourceView:
    """The resource of a grant, as it was granted (with no holder: the
    caller knows whether the lease still holds it)."""
    return ResourceView(
        name=name,
        owner="",
        lease_ids=(),
        fencing_token=fencing_token,
        **json.loads(text, object_hook=_decode),
    )
