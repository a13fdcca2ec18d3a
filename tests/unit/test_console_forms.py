"""The console's forms turn typed text into the contract's values, and the
broker's field violations back into the inputs they name."""

from __future__ import annotations

import pytest

from broker.v1 import lease_pb2, resource_pb2
from broker.web.console import display, forms

T = resource_pb2


def spec(kind: int, name: str = "f", **more) -> resource_pb2.FieldSpec:
    return resource_pb2.FieldSpec(name=name, type=kind, **more)


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (T.FIELD_TYPE_INTEGER, "42", T.FieldValue(int_value=42)),
        (T.FIELD_TYPE_FLOAT, "2.5", T.FieldValue(float_value=2.5)),
        (T.FIELD_TYPE_BOOLEAN, "yes", T.FieldValue(bool_value=True)),
        (T.FIELD_TYPE_BOOLEAN, "false", T.FieldValue(bool_value=False)),
        (T.FIELD_TYPE_IP_ADDRESS, "10.0.0.1", T.FieldValue(string_value="10.0.0.1")),
        (T.FIELD_TYPE_STRING, "rack 2", T.FieldValue(string_value="rack 2")),
    ],
)
def test_typed_text_becomes_the_fields_value(kind, text, expected):
    assert forms.parse_value(spec(kind), text) == expected


def test_a_date_and_time_without_a_zone_is_utc():
    value = forms.parse_value(spec(T.FIELD_TYPE_DATE_TIME), "2030-01-02T03:04")
    assert value.time_value.seconds == 1893553440


@pytest.mark.parametrize(
    ("kind", "text", "reason"),
    [
        (T.FIELD_TYPE_INTEGER, "4.5", "is not a whole number"),
        (T.FIELD_TYPE_FLOAT, "nan", "is not a finite number"),
        (T.FIELD_TYPE_FLOAT, "many", "is not a number"),
        (T.FIELD_TYPE_BOOLEAN, "maybe", "is not yes or no"),
        (T.FIELD_TYPE_DATE_TIME, "tomorrow", "is not a date and time"),
    ],
)
def test_text_that_is_not_a_value_of_the_type_is_refused_with_why(kind, text, reason):
    with pytest.raises(ValueError, match=reason):
        forms.parse_value(spec(kind), text)


def test_every_bad_input_is_named_at_once_and_empty_ones_are_left_to_defaults():
    kind = resource_pb2.Kind(
        name="Phone",
        fields=[spec(T.FIELD_TYPE_INTEGER, "battery"), spec(T.FIELD_TYPE_BOOLEAN, "rooted")],
    )
    with pytest.raises(forms.FormErrors) as refused:
        forms.resource_from_form(
            kind, {"field.battery": "full", "field.rooted": "maybe"}, name="p1"
        )
    assert set(refused.value.errors) == {"field.battery", "field.rooted"}
    resource, mask = forms.resource_from_form(kind, {"field.battery": "80"}, name="p1")
    assert dict(resource.fields) == {"battery": T.FieldValue(int_value=80)}
    assert list(mask.paths) == ["comment", "group", "fields.battery", "fields.rooted"]


def test_inputs_follow_the_declaration():
    kind = resource_pb2.Kind(
        name="Phone",
        fields=[
            spec(
                T.FIELD_TYPE_STRING,
                "os",
                required=True,
                choices=[T.FieldValue(string_value="android")],
            ),
            spec(T.FIELD_TYPE_INTEGER, "battery"),
            spec(T.FIELD_TYPE_STRING, "serial", max_length=32),
        ],
    )
    os_input, battery, serial = forms.inputs_of(kind)
    assert (os_input.input_type, os_input.required, os_input.choices) == (
        "select",
        True,
        ("android",),
    )
    assert (battery.input_type, battery.step) == ("number", "1")
    assert serial.max_length == 32


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("resource.fields.ip_address", "field.ip_address"),
        ("resource.name", "name"),
        ("resource.comment", "comment"),
        ("resource.etag", ""),
    ],
)
def test_a_violation_names_its_input(path, name):
    assert forms.input_of_violation(path) == name


def test_requirements_read_as_people_say_them():
    requirement = lease_pb2.Requirement(
        kind="Calculator",
        count=2,
        constraints=[
            lease_pb2.Constraint(field="ip_address", equals=T.FieldValue(string_value="10.0.0.7")),
            lease_pb2.Constraint(field="port", at_least=T.FieldValue(int_value=1000)),
        ],
    )
    assert display.requirement_text(requirement) == (
        "2 x Calculator where ip_address = 10.0.0.7, port ≥ 1000"
    )
