"""The values of `broker`'s `--set` and `--where` options, typed from the
kind's fields as `ListKinds` describes them, so that `--set port=1357` sends
an integer and `--set port=x` is refused before anything is sent. A
sub-resource field is set to the name of the resource it holds (`--set
sim=sim1`); `--where` may reach through it (`--where sim.carrier=att`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.command_line import UsageError
from broker.field_values import Scalar
from broker.v1 import resource_pb2
from sdk import field_text
from sdk.client import BrokerClient
from sdk.field_text import COMMON_FIELDS, FieldTextError, FieldTypes, own_fields


def kind_field_types(client: BrokerClient, kind: str) -> FieldTypes:
    """The kind's own fields and their types, as the broker declares them."""
    try:
        return field_text.field_types(client.list_kinds(), kind)
    except FieldTextError as error:
        raise UsageError(str(error)) from None


def parse_value(field: str, text: str, field_type: resource_pb2.FieldType.ValueType) -> Scalar:
    """`text` as the type of `field`; a bad value names the field."""
    try:
        return field_text.parse_value(field, text, field_type)
    except FieldTextError as error:
        raise UsageError(str(error)) from None


def split_assignment(option: str, text: str) -> tuple[str, str]:
    field, equals, value = text.partition("=")
    if not equals or not field:
        raise UsageError(f"{option} {text!r}: expected FIELD=VALUE")
    return field, value


# `--where` operators, longest first: FIELD=VALUE, FIELD!=VALUE, comparisons,
# and CSS's attribute selectors for text, ^= (starts with) and *= (contains).
WHERE_OPERATORS = (
    ("!=", "__not"),
    (">=", "__gte"),
    ("<=", "__lte"),
    ("^=", "__startswith"),
    ("*=", "__contains"),
    ("=", ""),
    (">", "__gt"),
    ("<", "__lt"),
)


def parse_where(items: Sequence[str], types: FieldTypes) -> dict[str, Any]:
    """`--where` constraints as `request()` keywords (`port>=1000` is
    `port__gte=1000`); a field given several times with `=` matches any of
    its values."""
    where: dict[str, list[Scalar]] = {}
    for item in items:
        field, lookup, text = _split_where(item)
        if field not in COMMON_FIELDS and not types:
            raise UsageError(f"--where {field}: a kind's own field needs --kind")
        try:
            if lookup in ("__startswith", "__contains"):
                # Text looked for as it is; the broker says if the field is no text.
                field_text.known_field(field, types)
                value: Scalar = text
            else:
                value = field_text.constraint_value(field, text, types)
        except FieldTextError as error:
            raise UsageError(f"--where {error}") from None
        keyword = field + lookup
        if lookup and keyword in where:
            raise UsageError(f"--where {item!r}: {field} is tested this way twice")
        where.setdefault(keyword, []).append(value)
    return {field: values[0] if len(values) == 1 else values for field, values in where.items()}


def _split_where(item: str) -> tuple[str, str, str]:
    """`(field, lookup, text)` of one `--where`, at its first operator."""
    for operator, lookup in WHERE_OPERATORS:
        field, found, text = item.partition(operator)
        if found and field and not any(mark in field for mark in "=!<>^*"):
            return field, lookup, text
    raise UsageError(
        f"--where {item!r}: expected FIELD=VALUE (or !=, >, >=, <, <=, ^= starts with, *= contains)"
    )


def parse_set(items: Sequence[str], types: FieldTypes) -> dict[str, Scalar]:
    """`--set` values of the kind's own fields."""
    fields: dict[str, Scalar] = {}
    for item in items:
        field, text = split_assignment("--set", item)
        if field not in own_fields(types):
            raise UsageError(f"--set {field}: no such field (fields: {_names(types)})")
        if field in fields:
            raise UsageError(f"--set {field}: given twice")
        fields[field] = parse_value(field, text, types[field])
    return fields


def _names(types: FieldTypes) -> str:
    return ", ".join(own_fields(types)) or "none"
