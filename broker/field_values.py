"""Python values <-> `broker.v1.FieldValue`: the contract's field values in
Python terms, shared by the SDK and the broker's servicers (it imports only
the generated contract)."""

from __future__ import annotations

import datetime

from broker.v1 import resource_pb2

Scalar = str | int | float | bool | datetime.datetime

# The range of `FieldValue.int_value`.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def to_field_value(value: Scalar) -> resource_pb2.FieldValue:
    """Wraps a Python scalar; `bool` is tested before `int` since it is one."""
    if isinstance(value, bool):
        return resource_pb2.FieldValue(bool_value=value)
    if isinstance(value, int):
        return resource_pb2.FieldValue(int_value=value)
    if isinstance(value, float):
        return resource_pb2.FieldValue(float_value=value)
    if isinstance(value, str):
        return resource_pb2.FieldValue(string_value=value)
    if isinstance(value, datetime.datetime):
        if value.utcoffset() is None:
            raise TypeError(
                f"a date-time needs its time zone, e.g. datetime.now(UTC), not {value!r}"
            )
        message = resource_pb2.FieldValue()
        message.time_value.FromDatetime(value.astimezone(datetime.UTC))
        return message
    raise TypeError(
        f"a field value is a str, int, float, bool or datetime, not {type(value).__name__}"
    )


def from_field_value(message: resource_pb2.FieldValue) -> Scalar | None:
    """Unwraps a `FieldValue`; None when no member is set."""
    which = message.WhichOneof("kind")
    if which == "time_value":
        return message.time_value.ToDatetime(tzinfo=datetime.UTC)
    return None if which is None else getattr(message, which)
