"""Kinds: how a `ResourceData` model is described, what the registry refuses,
and how values are checked against a field's type."""

from __future__ import annotations

import math

import peewee
import pytest

from broker.domain.errors import InvalidArgumentError, NotFoundError
from broker.domain.kinds import (
    INT64_MAX,
    INT64_MIN,
    TEXT_FIELD_MAX_LENGTH,
    KindDeclarationError,
    KindRegistry,
    check_value,
    describe,
)
from broker.domain.values import FieldSpec, FieldType
from broker.kind_data import IPAddressField, ResourceData
from resources.calculator.data import CalculatorData
from tests.kinds import LicenceData, PhoneData


class NotesData(ResourceData):
    """A kind with a text field, a callable default, a big integer and a double."""

    KIND = "Notes"

    text = peewee.TextField(null=True, help_text="Free text.")
    serial = peewee.BigIntegerField(default=lambda: 42)
    ratio = peewee.DoubleField(default=0.5)
    address = IPAddressField(null=True)


class OtherPhoneData(ResourceData):
    """Another model that claims the Phone kind's name."""

    KIND = "Phone"


class StampedData(ResourceData):
    """A kind with a field type the broker cannot serve."""

    seen = peewee.DateField(null=True)


def spec_of(model, name: str) -> FieldSpec:
    field = describe(model).field(name)
    assert field is not None, name
    return field


def test_describe_phone():
    kind = describe(PhoneData)
    assert (kind.name, kind.ownable, kind.doc) == ("Phone", True, "A phone on a test bench.")
    assert kind.fields == (
        FieldSpec("os", FieldType.STRING, True, None, "The operating system, e.g. android.", 32),
        FieldSpec("version", FieldType.INTEGER, False, 0, "The OS major version.", 0, 32),
        FieldSpec("rooted", FieldType.BOOLEAN, False, False, "Whether it is rooted.", 0),
        FieldSpec("battery", FieldType.FLOAT, False, None, "Battery capacity in mAh.", 0, 32),
    )


def test_describe_calculator_and_licence():
    calculator = describe(CalculatorData)
    assert calculator.name == "Calculator"
    assert calculator.doc.startswith("A calculator device reachable over RPyC")
    ip_address, port = calculator.fields
    assert (ip_address.name, ip_address.type, ip_address.required) == (
        "ip_address",
        FieldType.IP_ADDRESS,
        True,
    )
    assert ip_address.doc
    assert (port.name, port.type, port.required, port.default) == (
        "port",
        FieldType.INTEGER,
        False,
        None,
    )
    licence = describe(LicenceData)
    assert (licence.name, licence.ownable) == ("Licence", False)
    assert licence.fields == (
        FieldSpec("product", FieldType.STRING, True, None, "The licensed product.", 64),
    )


def test_describe_subclassed_field_types_and_defaults():
    kind = describe(NotesData)
    assert kind.name == "Notes"
    assert spec_of(NotesData, "text") == FieldSpec(
        "text", FieldType.STRING, False, None, "Free text.", TEXT_FIELD_MAX_LENGTH
    )
    assert spec_of(NotesData, "serial") == FieldSpec(
        "serial", FieldType.INTEGER, False, 42, "", 0, 64
    )
    assert spec_of(NotesData, "ratio").type == FieldType.FLOAT
    assert spec_of(NotesData, "address").type == FieldType.IP_ADDRESS
    assert "resource" not in {field.name for field in kind.fields}


def test_kind_name_drops_the_data_suffix():
    assert PhoneData.kind_name() == "Phone"
    assert OtherPhoneData.kind_name() == "Phone"

    class Data(ResourceData):
        pass

    assert Data.kind_name() == "Data"


def test_registry_finds_and_gets_kinds_in_name_order():
    registry = KindRegistry([PhoneData, CalculatorData, LicenceData])
    assert [kind.name for kind in registry] == ["Calculator", "Licence", "Phone"]
    assert registry.models == (CalculatorData, LicenceData, PhoneData)
    assert registry.find("Phone").model is PhoneData
    assert registry.find("Toaster") is None
    with pytest.raises(NotFoundError) as error:
        registry.get("Toaster")
    assert (error.value.resource_type, error.value.resource_name) == ("kind", "Toaster")


def test_registry_refuses_duplicate_kind_names():
    with pytest.raises(KindDeclarationError, match="'Phone' is declared twice"):
        KindRegistry([PhoneData, OtherPhoneData])


def test_unsupported_field_type_is_refused():
    with pytest.raises(KindDeclarationError, match=r"StampedData\.seen.*DateField"):
        describe(StampedData)
    with pytest.raises(KindDeclarationError):
        KindRegistry([StampedData])


# --------------------------------------------------------------- values


def spec(field_type: FieldType, required: bool = False) -> FieldSpec:
    """A field of `field_type`; strings are at most 8 characters long."""
    max_length = 8 if field_type == FieldType.STRING else 0
    return FieldSpec("f", field_type, required, None, "", max_length)


@pytest.mark.parametrize(
    ("field_type", "value", "stored"),
    [
        (FieldType.STRING, "", ""),
        (FieldType.STRING, "x" * 8, "x" * 8),
        (FieldType.INTEGER, 0, 0),
        (FieldType.INTEGER, INT64_MAX, INT64_MAX),
        (FieldType.INTEGER, INT64_MIN, INT64_MIN),
        (FieldType.FLOAT, 1, 1.0),
        (FieldType.FLOAT, -2.5, -2.5),
        (FieldType.FLOAT, INT64_MAX, float(INT64_MAX)),
        (FieldType.BOOLEAN, False, False),
        (FieldType.IP_ADDRESS, "10.0.0.1", "10.0.0.1"),
        (FieldType.IP_ADDRESS, "2001:0DB8::0001", "2001:db8::1"),
    ],
)
def test_check_value_accepts(field_type, value, stored):
    result = check_value(spec(field_type), value, "p")
    assert result == stored
    assert type(result) is type(stored)


@pytest.mark.parametrize(
    ("field_type", "value"),
    [
        (FieldType.INTEGER, True),
        (FieldType.INTEGER, False),
        (FieldType.INTEGER, 1.0),
        (FieldType.INTEGER, "1"),
        (FieldType.INTEGER, INT64_MAX + 1),
        (FieldType.INTEGER, INT64_MIN - 1),
        (FieldType.FLOAT, True),
        (FieldType.FLOAT, "1.5"),
        (FieldType.FLOAT, math.nan),
        (FieldType.FLOAT, math.inf),
        (FieldType.FLOAT, -math.inf),
        pytest.param(FieldType.FLOAT, 10**400, id="float-int-beyond-double"),
        (FieldType.BOOLEAN, 1),
        (FieldType.BOOLEAN, "true"),
        (FieldType.STRING, 1),
        (FieldType.STRING, "x" * 9),
        (FieldType.IP_ADDRESS, "10.0.0.1 "),
        (FieldType.IP_ADDRESS, "010.0.0.1"),
        (FieldType.IP_ADDRESS, "256.0.0.1"),
        (FieldType.IP_ADDRESS, ""),
        (FieldType.IP_ADDRESS, 167772161),
    ],
)
def test_check_value_refuses_naming_the_path(field_type, value):
    with pytest.raises(InvalidArgumentError) as error:
        check_value(spec(field_type), value, "resource.fields.f")
    assert [v.field for v in error.value.violations] == ["resource.fields.f"]


def test_check_value_none_clears_optional_and_refuses_required():
    assert check_value(spec(FieldType.INTEGER), None, "p") is None
    with pytest.raises(InvalidArgumentError, match="is required"):
        check_value(spec(FieldType.INTEGER, required=True), None, "p")


def test_string_without_max_length_is_unbounded_by_check_value():
    unbounded = FieldSpec("f", FieldType.STRING, False, None, "", 0)
    assert check_value(unbounded, "y" * 10_000, "p") == "y" * 10_000


def test_an_address_longer_than_its_column_is_refused():
    """An IPAddressField holds at most 45 characters; a scoped IPv6 address
    can be longer and must be refused as bad input, not fail in storage."""
    column = CalculatorData.ip_address.max_length
    address = "fe80::1%" + "e" * column
    with pytest.raises(InvalidArgumentError) as error:
        check_value(spec_of(CalculatorData, "ip_address"), address, "resource.fields.ip_address")
    assert error.value.violations[0].field == "resource.fields.ip_address"
