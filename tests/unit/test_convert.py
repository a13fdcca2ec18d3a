"""Messages <-> domain values, without a server."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from broker.api import convert
from broker.domain import values
from broker.field_values import from_field_value, to_field_value
from broker.v1 import event_pb2, inventory_service_pb2, lease_pb2, lease_service_pb2, resource_pb2

NOW = 1_800_000_000.123456


def resource_view(**changes) -> values.ResourceView:
    view = values.ResourceView(
        name="c1",
        kind="Calculator",
        fields={
            "label": "bench",
            "ip_address": "2001:db8::1",
            "port": 1357,
            "gain": 0.25,
            "enabled": False,
            "battery": None,
        },
        is_usable=False,
        comment="spare",
        group="bench-1",
        reserved_for="alice",
        owner="alice",
        lease_ids=("L1",),
        fencing_token=2**40,
        etag="v3",
        create_time=NOW,
        update_time=NOW + 1.5,
    )
    return dataclasses.replace(view, **changes)


def seconds_of_timestamp(stamp) -> float:
    return stamp.ToNanoseconds() / 1e9


# ---------------------------------------------------------- field values


@pytest.mark.parametrize(
    ("value", "member"),
    [
        ("text", "string_value"),
        ("", "string_value"),
        (0, "int_value"),
        (-(2**63), "int_value"),
        (2**63 - 1, "int_value"),
        (0.0, "float_value"),
        (-1.5e300, "float_value"),
        (True, "bool_value"),
        (False, "bool_value"),
    ],
)
def test_field_values_round_trip_with_their_type(value, member):
    message = to_field_value(value)
    assert message.WhichOneof("kind") == member
    back = from_field_value(resource_pb2.FieldValue.FromString(message.SerializeToString()))
    assert back == value
    assert type(back) is type(value)


def test_field_value_refuses_other_types_and_unwraps_empty_as_none():
    for value in (None, b"bytes", [1]):
        with pytest.raises(TypeError):
            to_field_value(value)
    assert from_field_value(resource_pb2.FieldValue()) is None


# ------------------------------------------------------------- time


@pytest.mark.parametrize("seconds", [0.0, 1.5, 0.000000001, NOW, 2_000_000_000.000001])
def test_timestamps_keep_microseconds(seconds):
    stamp = convert.timestamp(seconds)
    assert stamp.ToNanoseconds() == round(seconds * 1e9)
    assert seconds_of_timestamp(stamp) == pytest.approx(seconds, abs=1e-6)


def test_timestamp_split_into_seconds_and_nanos():
    stamp = convert.timestamp(1.5)
    assert (stamp.seconds, stamp.nanos) == (1, 500_000_000)


@pytest.mark.parametrize("seconds", [1.0, 30.25, 0.001, 3600.0, 86_400.000_000_001])
def test_durations_round_trip(seconds):
    span = convert.duration(seconds)
    assert span.ToNanoseconds() == round(seconds * 1e9)
    assert convert.seconds_of(span) == pytest.approx(seconds, abs=1e-9)
    assert convert.seconds_of(duration_pb2.Duration(seconds=2, nanos=1)) == 2.000000001


# ------------------------------------------------------------ resources


def test_resource_to_proto_carries_every_attribute():
    view = resource_view()
    message = resource_pb2.Resource.FromString(convert.resource_to_proto(view).SerializeToString())
    assert (message.name, message.kind) == ("c1", "Calculator")
    assert {name: value.WhichOneof("kind") for name, value in message.fields.items()} == {
        "label": "string_value",
        "ip_address": "string_value",
        "port": "int_value",
        "gain": "float_value",
        "enabled": "bool_value",
    }
    assert message.HasField("is_usable")
    assert message.is_usable is False
    assert (message.comment, message.group, message.reserved_for) == ("spare", "bench-1", "alice")
    assert (message.owner, list(message.lease_ids)) == ("alice", ["L1"])
    assert (message.fencing_token, message.etag) == (2**40, "v3")
    assert seconds_of_timestamp(message.create_time) == pytest.approx(NOW, abs=1e-6)
    assert seconds_of_timestamp(message.update_time) == pytest.approx(NOW + 1.5, abs=1e-6)


def test_resource_round_trips_to_a_new_resource():
    view = resource_view()
    new = convert.new_resource(convert.resource_to_proto(view))
    assert new == values.NewResource(
        name="c1",
        kind="Calculator",
        fields={k: v for k, v in view.fields.items() if v is not None},
        is_usable=False,
        comment="spare",
        group="bench-1",
        reserved_for="alice",
    )
    assert type(new.fields["enabled"]) is bool
    assert type(new.fields["port"]) is int


def test_is_usable_defaults_to_true_when_absent():
    assert convert.new_resource(resource_pb2.Resource(name="p", kind="Phone")).is_usable is True
    given = resource_pb2.Resource(name="p", kind="Phone", is_usable=False)
    assert convert.new_resource(given).is_usable is False


def test_resource_patch_takes_the_mask_and_etag():
    request = inventory_service_pb2.UpdateResourceRequest(
        resource=resource_pb2.Resource(
            name="p1",
            fields={"version": to_field_value(14)},
            is_usable=False,
            comment="c",
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["is_usable", "fields.version"]),
        etag="v7",
    )
    assert convert.resource_patch(request) == values.ResourcePatch(
        name="p1",
        paths=("is_usable", "fields.version"),
        fields={"version": 14},
        is_usable=False,
        comment="c",
        etag="v7",
    )


def test_kind_to_proto_keeps_falsy_defaults_and_omits_missing_ones():
    kind = values.KindSpec(
        "Phone",
        True,
        (
            values.FieldSpec("os", values.FieldType.STRING, True, None, "OS.", 32),
            values.FieldSpec("version", values.FieldType.INTEGER, False, 0, "", 0),
            values.FieldSpec("rooted", values.FieldType.BOOLEAN, False, False, "", 0),
            values.FieldSpec("ip", values.FieldType.IP_ADDRESS, False, "::1", "", 0),
        ),
        "A phone.",
    )
    message = convert.kind_to_proto(kind)
    assert (message.name, message.ownable, message.doc) == ("Phone", True, "A phone.")
    os_field, version, rooted, ip = message.fields
    assert not os_field.HasField("default_value")
    assert (os_field.required, os_field.max_length, os_field.doc) == (True, 32, "OS.")
    assert version.HasField("default_value")
    assert from_field_value(version.default_value) == 0
    assert from_field_value(rooted.default_value) is False
    assert from_field_value(ip.default_value) == "::1"
    assert [f.type for f in message.fields] == [
        resource_pb2.FIELD_TYPE_STRING,
        resource_pb2.FIELD_TYPE_INTEGER,
        resource_pb2.FIELD_TYPE_BOOLEAN,
        resource_pb2.FIELD_TYPE_IP_ADDRESS,
    ]


def test_enum_numbers_match_the_contract():
    for field_type in values.FieldType:
        assert resource_pb2.FieldType.Value(f"FIELD_TYPE_{field_type.name}") == field_type
    for state in values.LeaseState:
        assert lease_pb2.LeaseState.Value(f"LEASE_STATE_{state.name}") == state
    for cause in values.ObstacleCause:
        assert lease_pb2.ObstacleCause.Value(f"OBSTACLE_CAUSE_{cause.name}") == cause
    for event_type in values.EventType:
        assert event_pb2.EventType.Value(f"EVENT_TYPE_{event_type.name}")


def test_access_attributes_and_obstacles_reach_the_wire():
    view = resource_view(
        reserved_until=NOW + 60,
        reservation_reason="demo",
        service_reason="fan broken",
        setup_failures=2,
        last_grant_time=NOW - 5,
    )
    message = convert.resource_to_proto(view)
    assert seconds_of_timestamp(message.reserved_until) == pytest.approx(NOW + 60, abs=1e-6)
    assert (message.reservation_reason, message.service_reason) == ("demo", "fan broken")
    assert message.setup_failures == 2
    assert seconds_of_timestamp(message.last_grant_time) == pytest.approx(NOW - 5, abs=1e-6)
    assert not convert.resource_to_proto(resource_view()).HasField("reserved_until")
    obstacle = values.Obstacle("c1", values.ObstacleCause.RESERVED, "c1 is reserved", NOW, "bob")
    blocked = convert.blocked_to_proto(values.Blocked(0, "", "Calculator", (), (obstacle,)))
    [sent] = blocked.obstacles
    assert (sent.resource, sent.cause, sent.text, sent.principal) == (
        "c1",
        lease_pb2.OBSTACLE_CAUSE_RESERVED,
        "c1 is reserved",
        "bob",
    )
    assert seconds_of_timestamp(sent.until) == pytest.approx(NOW, abs=1e-6)


# -------------------------------------------------------------- leasing


def test_constraints_equals_any_of_and_unset():
    equals = lease_pb2.Constraint(field="os", equals=to_field_value("android"))
    assert convert.constraint(equals) == values.Constraint("os", ("android",))
    any_of = lease_pb2.Constraint(
        field="version",
        any_of=lease_pb2.FieldValueList(values=[to_field_value(13), to_field_value(14)]),
    )
    assert convert.constraint(any_of) == values.Constraint("version", (13, 14), values.Check.ANY_OF)
    assert convert.constraint(lease_pb2.Constraint(field="os")) == values.Constraint("os", ())


def test_acquire_request_with_and_without_ttl():
    requirement = lease_pb2.Requirement(
        kind="Phone",
        constraints=[lease_pb2.Constraint(field="rooted", equals=to_field_value(True))],
        count=2,
        label="phones",
    )
    request = lease_service_pb2.AcquireLeaseRequest(
        requirements=[requirement], ttl=convert.duration(90.5)
    )
    assert convert.acquire_request(request, "alice") == values.AcquireRequest(
        requirements=(
            values.Requirement(
                "Phone", (values.Constraint("rooted", (True,)),), count=2, label="phones"
            ),
        ),
        ttl=90.5,
        holder="alice",
    )
    no_ttl = lease_service_pb2.AcquireLeaseRequest(requirements=[requirement])
    assert convert.acquire_request(no_ttl, "").ttl is None
    zero_ttl = lease_service_pb2.AcquireLeaseRequest(
        requirements=[requirement], ttl=duration_pb2.Duration()
    )
    assert convert.acquire_request(zero_ttl, "").ttl == 0.0


def lease_view(**changes) -> values.LeaseView:
    grant = values.GrantView(1, "calc", resource_view(), 2**40)
    view = values.LeaseView(
        lease_id="L1",
        holder="alice",
        state=values.LeaseState.ACTIVE,
        grants=(grant,),
        ttl=30.5,
        create_time=NOW,
        expire_time=NOW + 30.5,
        end_time=None,
        end_reason="",
    )
    return dataclasses.replace(view, **changes)


def test_lease_to_proto_with_its_grants():
    message = lease_pb2.Lease.FromString(convert.lease_to_proto(lease_view()).SerializeToString())
    assert (message.lease_id, message.holder) == ("L1", "alice")
    assert message.state == lease_pb2.LEASE_STATE_ACTIVE
    assert convert.seconds_of(message.ttl) == 30.5
    assert seconds_of_timestamp(message.create_time) == pytest.approx(NOW, abs=1e-6)
    assert seconds_of_timestamp(message.expire_time) == pytest.approx(NOW + 30.5, abs=1e-6)
    assert not message.HasField("end_time")
    [grant] = message.grants
    assert (grant.requirement_index, grant.label, grant.fencing_token) == (1, "calc", 2**40)
    assert grant.resource == convert.resource_to_proto(resource_view())


def test_ended_lease_to_proto_has_its_end():
    view = lease_view(state=values.LeaseState.REVOKED, end_time=NOW + 5, end_reason="maint")
    message = convert.lease_to_proto(view)
    assert message.state == lease_pb2.LEASE_STATE_REVOKED
    assert message.HasField("end_time")
    assert seconds_of_timestamp(message.end_time) == pytest.approx(NOW + 5, abs=1e-6)
    assert message.end_reason == "maint"


def test_lease_state_zero_means_any():
    assert convert.lease_state(0) is None
    assert convert.lease_state(lease_pb2.LEASE_STATE_EXPIRED) == values.LeaseState.EXPIRED
