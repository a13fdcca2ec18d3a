"""How the console shows the contract's values to people: one place for
the text of a field value, a state, a time or a span, used by the pages'
templates and by the live updates alike."""

from __future__ import annotations

import datetime
from typing import Any

from broker.v1 import event_pb2, lease_pb2, resource_pb2


def value_text(value: resource_pb2.FieldValue | None) -> str:
    if value is None:
        return ""
    which = value.WhichOneof("kind")
    if which is None:
        return ""
    if which == "bool_value":
        return "yes" if value.bool_value else "no"
    if which == "time_value":
        return time_text(value.time_value)
    return str(getattr(value, which))


def time_text(stamp) -> str:
    """A timestamp as UTC, to the second; empty when unset."""
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return ""
    moment = datetime.datetime.fromtimestamp(stamp.seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def span_text(span) -> str:
    """A duration as people say it: `90 s`, `15 min`, `2 h 30 min`."""
    seconds = int(span.seconds) if span is not None else 0
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def state_of(resource: resource_pb2.Resource) -> str:
    """free, held, reserved or out of service, as one word for the filters."""
    if resource.HasField("is_usable") and not resource.is_usable:
        return "out-of-service"
    if resource.lease_ids:
        return "held"
    if resource.reserved_for:
        return "reserved"
    return "free"


STATE_LABELS = {
    "free": "free",
    "held": "held",
    "reserved": "reserved",
    "out-of-service": "out of service",
}


def lease_state_text(state: int) -> str:
    return (
        lease_pb2.LeaseState.Name(lease_pb2.LeaseState.ValueType(state))
        .removeprefix("LEASE_STATE_")
        .lower()
    )


def event_type_text(kind: int) -> str:
    return (
        event_pb2.EventType.Name(event_pb2.EventType.ValueType(kind))
        .removeprefix("EVENT_TYPE_")
        .lower()
        .replace("_", " ")
    )


def event_type_names() -> list[tuple[str, str]]:
    """(enum name, text) of every event type, for the log's filter."""
    return [
        (name, event_type_text(number))
        for name, number in event_pb2.EventType.items()
        if number != event_pb2.EVENT_TYPE_UNSPECIFIED
    ]


def resource_row(resource: resource_pb2.Resource) -> dict[str, Any]:
    """What a live page shows of a resource: the texts of its cells."""
    return {
        "name": resource.name,
        "kind": resource.kind,
        "group": resource.group,
        "state": state_of(resource),
        "state_text": STATE_LABELS[state_of(resource)],
        "owner": resource.owner,
        "fencing_token": str(resource.fencing_token),
        "comment": resource.comment,
        "service_reason": resource.service_reason,
        "reserved_for": resource.reserved_for,
        "lease_ids": list(resource.lease_ids),
        "fields": {name: value_text(value) for name, value in resource.fields.items()},
    }


def lease_row(lease: lease_pb2.Lease) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "holder": lease.holder,
        "principal": lease.principal,
        "state": lease_state_text(lease.state),
        "resources": ", ".join(grant.resource.name for grant in lease.grants),
        "since": time_text(lease.create_time),
        "expires": time_text(lease.expire_time),
        "ttl": span_text(lease.ttl),
        "active": lease.state == lease_pb2.LEASE_STATE_ACTIVE,
    }


def event_row(event: event_pb2.Event) -> dict[str, Any]:
    return {
        "sequence": str(event.sequence),
        "time": time_text(event.time),
        "type": event_type_text(event.type),
        "actor": event.actor,
        "resource": event.resource,
        "kind": event.kind,
        "lease_id": event.lease_id,
        "reason": event.reason,
    }


def requirement_text(requirement: lease_pb2.Requirement) -> str:
    """`2 x Calculator where ip_address = 10.0.0.7`."""
    count = requirement.count or 1
    text = f"{count} x {requirement.kind}" if count != 1 else requirement.kind
    if requirement.constraints:
        text += " where " + ", ".join(constraint_text(c) for c in requirement.constraints)
    return text


_TESTS = {
    "equals": "=",
    "greater_than": ">",
    "at_least": "≥",
    "less_than": "<",
    "at_most": "≤",
}


def constraint_text(constraint: lease_pb2.Constraint) -> str:
    test = constraint.WhichOneof("test")
    if test == "any_of":
        shown = " or ".join(value_text(v) for v in constraint.any_of.values)
        return f"{constraint.field} is {shown}"
    if test == "prefix":
        return f"{constraint.field} starts with {constraint.prefix}"
    if test in _TESTS:
        return f"{constraint.field} {_TESTS[test]} {value_text(getattr(constraint, test))}"
    return constraint.field
