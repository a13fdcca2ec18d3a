"""How the `broker` command shows the contract's messages to people: aligned
tables, `key: value` blocks, local ISO times, and errors with their details.

Every function returns text and prints nothing, so `sdk.cli` decides where
it goes.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import struct_pb2, timestamp_pb2

from broker.command_line import NONE, details, table
from broker.field_values import from_field_value
from broker.v1 import access_service_pb2, event_pb2, event_service_pb2, lease_pb2, resource_pb2
from sdk.errors import BrokerError, FailedPreconditionError, InvalidArgumentError, ResourceBusyError
from sdk.text import holder_text, local_time, queue_status_text, requirement_text
from sdk.waiting import Waiting


def value_text(value: resource_pb2.FieldValue) -> str:
    scalar = from_field_value(value)
    if scalar is None:
        return NONE
    if isinstance(scalar, bool):
        return "true" if scalar else "false"
    if value.HasField("time_value"):
        return local_time(value.time_value)
    return str(scalar)


def enum_text(name: str, prefix: str) -> str:
    """`LEASE_STATE_ACTIVE` -> `active`."""
    return name.removeprefix(prefix).lower()


def caller_text(caller: access_service_pb2.GetCallerResponse) -> str:
    """Who the broker takes the caller to be."""
    return details(
        (
            ("name", caller.name or NONE),
            ("role", enum_text(access_service_pb2.Role.Name(caller.role), "ROLE_")),
            ("groups", ", ".join(caller.groups) or NONE),
            ("authentication", "on" if caller.authentication_enabled else "off"),
        )
    )


def event_line(event: event_pb2.Event) -> str:
    """One line per event: its sequence (to resume after), local time, type,
    resource and kind, then whatever else it records."""
    parts = [
        str(event.sequence),
        local_time(event.time),
        enum_text(event_pb2.EventType.Name(event.type), "EVENT_TYPE_"),
        event.resource or NONE,
        event.kind or NONE,
    ]
    for key, value in (
        ("actor", event.actor),
        ("lease", event.lease_id),
        ("token", str(event.fencing_token) if event.fencing_token else ""),
        ("reason", event.reason),
    ):
        if value:
            parts.append(f"{key}={value}")
    for key, detail in sorted(event.detail.items()):
        parts.append(f"{key}={detail_text(key, detail)}")
    return "  ".join(parts)


def detail_text(key: str, value) -> str:
    """An event's detail value on one line: a list as `a,b`, a time (a key
    ending in `_until` or `_time`, seconds since the epoch) in local ISO."""
    if isinstance(value, struct_pb2.ListValue):
        return ",".join(detail_text(key, item) for item in value)
    if isinstance(value, struct_pb2.Struct):
        return ",".join(f"{k}:{detail_text(k, v)}" for k, v in sorted(value.items()))
    if isinstance(value, int | float) and key.endswith(("_until", "_time")):
        moment = timestamp_pb2.Timestamp()
        moment.FromNanoseconds(int(value * 1e9))
        return local_time(moment)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def usage_table(stats: Iterable[event_service_pb2.UsageStats]) -> str:
    """One row per resource (or kind); times in seconds."""
    return table(
        (
            "RESOURCE",
            "KIND",
            "GRANTS",
            "HELD",
            "MEAN HELD",
            "WAIT P50",
            "WAIT P95",
            "EXPIRIES",
            "REVOKES",
            "QUARANTINES",
        ),
        (
            (
                row.resource or NONE,
                row.kind,
                str(row.grants),
                _seconds(row.total_held),
                _seconds(row.mean_held),
                _seconds(row.wait_p50),
                _seconds(row.wait_p95),
                str(row.expiries),
                str(row.revokes),
                str(row.quarantines),
            )
            for row in stats
        ),
    )


def _seconds(span) -> str:
    return f"{span.ToNanoseconds() / 1e9:.3f}s"


def kinds_table(kinds: Iterable[resource_pb2.Kind]) -> str:
    return table(
        ("KIND", "OWNABLE", "FIELDS"),
        (
            (
                kind.name,
                _yes_no(kind.ownable),
                " ".join(_field_text(spec) for spec in kind.fields),
            )
            for kind in kinds
        ),
    )


def _field_text(spec: resource_pb2.FieldSpec) -> str:
    """`port:integer`, `os:string(android|ios)` for a field with choices,
    `sim:reference(Sim)` for a sub-resource field of kind Sim."""
    text = f"{spec.name}:{_field_type(spec.type)}"
    if spec.type == resource_pb2.FIELD_TYPE_REFERENCE:
        text += f"({spec.kind})"
    elif spec.choices:
        text += "(" + "|".join(value_text(choice) for choice in spec.choices) + ")"
    return text


def resources_table(resources: Iterable[resource_pb2.Resource]) -> str:
    """One row per resource; a PARENT column when one of them is a
    sub-resource."""
    resources = list(resources)
    parents = any(resource.parent for resource in resources)
    return table(
        ("NAME", "KIND", "USABLE", "OWNER", "GROUP", *(("PARENT",) if parents else ()), "FIELDS"),
        (
            (
                resource.name,
                resource.kind,
                _yes_no(_usable(resource)),
                resource.owner or NONE,
                resource.group or NONE,
                *((resource.parent or NONE,) if parents else ()),
                _fields_text(resource),
            )
            for resource in resources
        ),
    )


def resource_details(resource: resource_pb2.Resource) -> str:
    return details(
        [
            ("name", resource.name),
            ("kind", resource.kind),
            *((("parent", resource.parent),) if resource.parent else ()),
            ("usable", _yes_no(_usable(resource))),
            ("out of service", resource.service_reason or NONE),
            ("failed setups", str(resource.setup_failures)),
            ("owner", resource.owner or NONE),
            ("leases", ", ".join(resource.lease_ids) or NONE),
            ("group", resource.group or NONE),
            ("comment", resource.comment or NONE),
            ("reserved for", resource.reserved_for or NONE),
            ("reserved until", local_time(resource.reserved_until)),
            ("reservation reason", resource.reservation_reason or NONE),
            ("last granted", local_time(resource.last_grant_time)),
            ("fencing token", str(resource.fencing_token)),
            ("etag", resource.etag or NONE),
            ("created", local_time(resource.create_time)),
            ("updated", local_time(resource.update_time)),
            *((f"fields.{name}", value_text(value)) for name, value in _fields(resource)),
        ]
    )


def leases_table(leases: Iterable[lease_pb2.Lease]) -> str:
    return table(
        ("LEASE", "PRINCIPAL", "HOLDER", "STATE", "RESOURCES", "CREATED", "EXPIRES/ENDED"),
        (
            (
                lease.lease_id,
                lease.principal or NONE,
                lease.holder or NONE,
                _state(lease),
                ",".join(grant.resource.name for grant in lease.grants),
                local_time(lease.create_time),
                local_time(
                    lease.expire_time
                    if lease.state == lease_pb2.LEASE_STATE_ACTIVE
                    else lease.end_time
                ),
            )
            for lease in leases
        ),
    )


def lease_details(lease: lease_pb2.Lease, secret: str = "") -> str:
    pairs = [("lease", lease.lease_id)]
    if secret:
        pairs.append(("secret", secret))
    pairs += [
        ("principal", lease.principal or NONE),
        ("holder", lease.holder or NONE),
        ("state", _state(lease)),
        ("ttl", f"{lease.ttl.ToTimedelta().total_seconds():g}s"),
        ("created", local_time(lease.create_time)),
        ("expires", local_time(lease.expire_time)),
        ("ended", local_time(lease.end_time)),
    ]
    if lease.end_reason:
        pairs.append(("reason", lease.end_reason))
    parents = any(grant.parent for grant in lease.grants)
    grants = table(
        ("RESOURCE", "KIND", "LABEL", *(("PARENT",) if parents else ()), "FENCING TOKEN"),
        (
            (
                grant.resource.name,
                grant.resource.kind,
                grant.label or NONE,
                *((grant.parent or NONE,) if parents else ()),
                str(grant.fencing_token),
            )
            for grant in lease.grants
        ),
    )
    return f"{details(pairs)}\n\n{grants}"


def error_text(error: BrokerError) -> str:
    """`error: CODE: message`, then one line per detail worth reading."""
    lines = [f"error: {error.code.name}: {error.message}"]
    if isinstance(error, InvalidArgumentError):
        lines += [
            f"  {field}: {description}"
            for field, description in error.field_violations
            if description not in error.message
        ]
    if isinstance(error, FailedPreconditionError):
        # The first violation is the message itself, and the message may
        # quote the others: each line says something the message does not.
        lines += [
            f"  {kind} {subject}: {description}"
            for kind, subject, description in error.violations
            if description not in error.message
        ]
    if isinstance(error, ResourceBusyError) and error.blocked is not None:
        blocked = error.blocked
        if blocked.obstacles:
            more = [o.text for o in blocked.obstacles if o.text not in error.message]
        else:
            more = [holder_text(holder) for holder in blocked.holders]
        if more:
            lines.append(f"  {requirement_text(blocked)}:")
            lines += [f"  {text}" for text in more]
    return "\n".join(lines)


def waiting_text(waiting: Waiting) -> str:
    """One line per change of a waiting request's place in the queue."""
    return queue_status_text(waiting.status)


def waiters_table(waiters: Iterable[lease_pb2.Waiter]) -> str:
    return table(
        (
            "POS",
            "WAITER",
            "PRINCIPAL",
            "HOLDER",
            "PRIORITY",
            "WANTS",
            "BLOCKED",
            "WAITING SINCE",
            "DEADLINE",
        ),
        (
            (
                str(waiter.position),
                str(waiter.waiter_id),
                waiter.principal or NONE,
                waiter.holder or NONE,
                str(waiter.priority),
                "; ".join(_requirement_text(requirement) for requirement in waiter.requirements),
                _blocked_text(waiter),
                local_time(waiter.enqueue_time),
                local_time(waiter.deadline),
            )
            for waiter in waiters
        ),
    )


def _requirement_text(requirement: lease_pb2.Requirement) -> str:
    """`Phone x2 os=android version=13|14`."""
    parts = [f"{requirement.kind} x{requirement.count or 1}"]
    for constraint in requirement.constraints:
        if constraint.HasField("any_of"):
            values = "|".join(value_text(value) for value in constraint.any_of.values)
        else:
            values = value_text(constraint.equals)
        parts.append(f"{constraint.field}={values}")
    return " ".join(parts)


def _blocked_text(waiter: lease_pb2.Waiter) -> str:
    """The blocked requirement's index, with its label if it has one."""
    index = waiter.blocked_requirement_index
    requirements = waiter.requirements
    label = requirements[index].label if 0 <= index < len(requirements) else ""
    return f"{index} ({label})" if label else str(index)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _usable(resource: resource_pb2.Resource) -> bool:
    return resource.is_usable if resource.HasField("is_usable") else True


def _field_type(field_type: resource_pb2.FieldType.ValueType) -> str:
    return enum_text(resource_pb2.FieldType.Name(field_type), "FIELD_TYPE_")


def _state(lease: lease_pb2.Lease) -> str:
    return enum_text(lease_pb2.LeaseState.Name(lease.state), "LEASE_STATE_")


def _fields(resource: resource_pb2.Resource) -> list[tuple[str, resource_pb2.FieldValue]]:
    return sorted(resource.fields.items())


def _fields_text(resource: resource_pb2.Resource) -> str:
    return " ".join(f"{name}={value_text(value)}" for name, value in _fields(resource)) or NONE
