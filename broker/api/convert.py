"""Messages <-> domain values. Pure functions, round-tripped in the tests."""

from __future__ import annotations

from typing import cast

from google.protobuf import duration_pb2, timestamp_pb2

from broker.domain import values
from broker.domain.errors import InvalidArgumentError
from broker.field_values import from_field_value, to_field_value
from broker.v1 import (
    event_pb2,
    event_service_pb2,
    inventory_service_pb2,
    lease_pb2,
    lease_service_pb2,
    resource_pb2,
)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def duration(seconds: float) -> duration_pb2.Duration:
    span = duration_pb2.Duration()
    span.FromNanoseconds(round(seconds * 1e9))
    return span


def seconds_of(span: duration_pb2.Duration) -> float:
    return span.ToNanoseconds() / 1e9


# ------------------------------------------------------------------ kinds


def kind_to_proto(kind: values.KindSpec) -> resource_pb2.Kind:
    return resource_pb2.Kind(
        name=kind.name,
        ownable=kind.ownable,
        doc=kind.doc,
        lock_delay=duration(kind.lock_delay),
        fields=[
            resource_pb2.FieldSpec(
                name=field.name,
                type=resource_pb2.FieldType.ValueType(field.type),
                required=field.required,
                default_value=None if field.default is None else to_field_value(field.default),
                doc=field.doc,
                max_length=field.max_length,
                choices=[to_field_value(choice) for choice in field.choices],
                kind=field.kind,
            )
            for field in kind.fields
        ],
    )


# -------------------------------------------------------------- resources


def resource_to_proto(view: values.ResourceView) -> resource_pb2.Resource:
    return resource_pb2.Resource(
        name=view.name,
        kind=view.kind,
        fields={
            name: to_field_value(value) for name, value in view.fields.items() if value is not None
        },
        is_usable=view.is_usable,
        comment=view.comment,
        group=view.group,
        reserved_for=view.reserved_for,
        owner=view.owner,
        lease_ids=view.lease_ids,
        fencing_token=view.fencing_token,
        etag=view.etag,
        create_time=timestamp(view.create_time),
        update_time=timestamp(view.update_time),
        reserved_until=None if view.reserved_until is None else timestamp(view.reserved_until),
        reservation_reason=view.reservation_reason,
        service_reason=view.service_reason,
        setup_failures=view.setup_failures,
        last_grant_time=None if view.last_grant_time is None else timestamp(view.last_grant_time),
        parent=view.parent,
    )


def _reserved_until(message: resource_pb2.Resource) -> float | None:
    return seconds_at(message.reserved_until) if message.HasField("reserved_until") else None


def _fields(message: resource_pb2.Resource) -> dict:
    return {name: from_field_value(value) for name, value in message.fields.items()}


def new_resource(message: resource_pb2.Resource) -> values.NewResource:
    return values.NewResource(
        name=message.name,
        kind=message.kind,
        fields=_fields(message),
        is_usable=message.is_usable if message.HasField("is_usable") else True,
        comment=message.comment,
        group=message.group,
        reserved_for=message.reserved_for,
        reserved_until=_reserved_until(message),
        reservation_reason=message.reservation_reason,
    )


def resource_patch(request: inventory_service_pb2.UpdateResourceRequest) -> values.ResourcePatch:
    resource = request.resource
    return values.ResourcePatch(
        name=resource.name,
        paths=tuple(request.update_mask.paths),
        fields=_fields(resource),
        is_usable=resource.is_usable,
        comment=resource.comment,
        group=resource.group,
        reserved_for=resource.reserved_for,
        reserved_until=_reserved_until(resource),
        reservation_reason=resource.reservation_reason,
        etag=request.etag,
    )


# ---------------------------------------------------------------- leasing


def constraint(message: lease_pb2.Constraint) -> values.Constraint:
    """A constraint as the domain checks it; no test is no values (refused
    there, naming the field)."""
    test = message.WhichOneof("test")
    if test is None:
        return values.Constraint(message.field, (), negate=message.negate)
    kind = values.Check(test)
    given: tuple[values.Scalar | None, ...]
    if kind is values.Check.ANY_OF:
        given = tuple(from_field_value(value) for value in message.any_of.values)
    elif kind in values.TEXT_TESTS:
        given = (getattr(message, test),)
    else:
        given = (from_field_value(getattr(message, test)),)
    return values.Constraint(message.field, given, kind, message.negate)


def constraint_to_proto(c: values.Constraint) -> lease_pb2.Constraint:
    # A stored request's constraints were checked: every value is set.
    given = cast("tuple[values.Scalar, ...]", c.values)
    message = lease_pb2.Constraint(field=c.field, negate=c.negate)
    if c.test is values.Check.ANY_OF:
        message.any_of.CopyFrom(lease_pb2.FieldValueList(values=[to_field_value(v) for v in given]))
    elif c.test in values.TEXT_TESTS:
        setattr(message, c.test.value, given[0])
    else:
        getattr(message, c.test.value).CopyFrom(to_field_value(given[0]))
    return message


def requirement(message: lease_pb2.Requirement) -> values.Requirement:
    return values.Requirement(
        kind=message.kind,
        constraints=tuple(constraint(c) for c in message.constraints),
        count=message.count,
        label=message.label,
    )


def acquire_request(
    request: lease_service_pb2.AcquireLeaseRequest,
    holder: str,
    principal: str = "",
    verified: bool = False,
    groups: tuple[str, ...] | None = None,
) -> values.AcquireRequest:
    return values.AcquireRequest(
        requirements=tuple(requirement(r) for r in request.requirements),
        ttl=seconds_of(request.ttl) if request.HasField("ttl") else None,
        holder=holder,
        max_wait=seconds_of(request.max_wait) if request.HasField("max_wait") else 0.0,
        priority=request.priority,
        request_id=request.request_id,
        session_id=request.session_id,
        principal=principal,
        verified=verified,
        groups=groups,
    )


def granted_to_proto(granted: values.Granted) -> lease_service_pb2.AcquireLeaseResponse:
    return lease_service_pb2.AcquireLeaseResponse(
        lease=lease_to_proto(granted.lease), secret=granted.secret
    )


def blocked_to_proto(blocked: values.Blocked) -> lease_pb2.AcquireBlocked:
    return lease_pb2.AcquireBlocked(
        requirement_index=blocked.requirement_index,
        label=blocked.label,
        kind=blocked.kind,
        holders=[
            lease_pb2.Holder(
                resource=h.resource,
                lease_id=h.lease_id,
                holder=h.holder,
                expire_time=timestamp(h.expire_time),
            )
            for h in blocked.holders
        ],
        obstacles=[obstacle_to_proto(o) for o in blocked.obstacles],
    )


def obstacle_to_proto(obstacle: values.Obstacle) -> lease_pb2.Obstacle:
    return lease_pb2.Obstacle(
        resource=obstacle.resource,
        cause=lease_pb2.ObstacleCause.ValueType(obstacle.cause),
        text=obstacle.text,
        until=None if obstacle.until is None else timestamp(obstacle.until),
        principal=obstacle.principal,
    )


def queue_status_to_proto(waiting: values.Waiting) -> lease_pb2.QueueStatus:
    return lease_pb2.QueueStatus(
        waiter_id=waiting.waiter_id,
        position=waiting.position,
        blocked=None if waiting.blocked is None else blocked_to_proto(waiting.blocked),
        deadline=timestamp(waiting.deadline),
        quota=waiting.quota,
    )


def requirement_to_proto(requirement: values.Requirement) -> lease_pb2.Requirement:
    return lease_pb2.Requirement(
        kind=requirement.kind,
        constraints=[constraint_to_proto(c) for c in requirement.constraints],
        count=requirement.count,
        label=requirement.label,
    )


def waiter_to_proto(view: values.WaiterView) -> lease_pb2.Waiter:
    return lease_pb2.Waiter(
        waiter_id=view.waiter_id,
        holder=view.holder,
        priority=view.priority,
        requirements=[requirement_to_proto(r) for r in view.requirements],
        position=view.position,
        blocked_requirement_index=view.blocked_requirement_index,
        enqueue_time=timestamp(view.enqueue_time),
        deadline=timestamp(view.deadline),
        principal=view.principal,
    )


def session_to_proto(view: values.SessionView) -> lease_service_pb2.OpenSessionResponse:
    return lease_service_pb2.OpenSessionResponse(
        session_id=view.session_id,
        expire_time=timestamp(view.expire_time),
        keepalive_timeout=duration(view.keepalive_timeout),
    )


def lease_to_proto(view: values.LeaseView) -> lease_pb2.Lease:
    return lease_pb2.Lease(
        lease_id=view.lease_id,
        holder=view.holder,
        state=lease_pb2.LeaseState.ValueType(view.state),
        grants=[
            lease_pb2.Grant(
                requirement_index=grant.requirement_index,
                label=grant.label,
                resource=resource_to_proto(grant.resource),
                fencing_token=grant.fencing_token,
                release_time=None if grant.release_time is None else timestamp(grant.release_time),
                parent=grant.parent,
            )
            for grant in view.grants
        ],
        ttl=duration(view.ttl),
        create_time=timestamp(view.create_time),
        expire_time=timestamp(view.expire_time),
        end_time=None if view.end_time is None else timestamp(view.end_time),
        end_reason=view.end_reason,
        session_id=view.session_id,
        principal=view.principal,
        max_expire_time=None if view.max_expire_time is None else timestamp(view.max_expire_time),
    )


def lease_state(number: int) -> values.LeaseState | None:
    """UNSPECIFIED (0) means any state."""
    return None if number == 0 else values.LeaseState(number)


def event_filter(message: event_service_pb2.EventFilter) -> values.EventFilter:
    """UNSPECIFIED among `types` is the caller's error, named by its index."""
    types = []
    for index, number in enumerate(message.types):
        if number == event_pb2.EVENT_TYPE_UNSPECIFIED:
            raise InvalidArgumentError.of(f"filter.types[{index}]", "must name an event type")
        types.append(values.EventType[event_pb2.EventType.Name(number)[len("EVENT_TYPE_") :]])
    return values.EventFilter(
        resource=message.resource,
        kind=message.kind,
        lease_id=message.lease_id,
        actor=message.actor,
        types=tuple(types),
        start_time=seconds_at(message.start_time) if message.HasField("start_time") else None,
        end_time=seconds_at(message.end_time) if message.HasField("end_time") else None,
    )


def seconds_at(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def event_to_proto(view: values.EventView) -> event_pb2.Event:
    message = event_pb2.Event(
        sequence=view.sequence,
        time=timestamp(view.time),
        type=event_pb2.EventType.Value("EVENT_TYPE_" + view.type.name),
        actor=view.actor,
        reason=view.reason,
        resource=view.resource,
        kind=view.kind,
        lease_id=view.lease_id,
        fencing_token=view.fencing_token,
    )
    if view.detail:
        message.detail.update(view.detail)
    return message


def usage_to_proto(view: values.UsageView) -> event_service_pb2.UsageStats:
    return event_service_pb2.UsageStats(
        resource=view.resource,
        kind=view.kind,
        grants=view.grants,
        total_held=duration(view.total_held),
        mean_held=duration(view.mean_held),
        wait_p50=duration(view.wait_p50),
        wait_p95=duration(view.wait_p95),
        expiries=view.expiries,
        revokes=view.revokes,
        quarantines=view.quarantines,
    )
