"""The values of `broker`'s `--set` and `--where` options, typed from the
kind's fields as `ListKinds` describes them, so that `--set port=1357` sends
an integer and `--set port=x` is refused before anything is sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker import cli_output as output
from broker.api.field_values import INT64_MAX, INT64_MIN, Scalar
from broker.v1 import resource_pb2
from sdk.client import BrokerClient

# Common fields a constraint may name; all of them are text.
COMMON_FIELDS = ("name", "group", "comment")
TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})

# A kind's own field name -> its `resource_pb2.FieldType`.
FieldTypes = dict[str, resource_pb2.FieldType.ValueType]


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see."""


def kind_field_types(client: BrokerClient, kind: str) -> FieldTypes:
    """The kind's own fields and their types, as the broker declares them."""
    kinds = {known.name: known for known in client.list_kinds()}
    if kind not in kinds:
        raise UsageError(f"no kind {kind!r} (known: {', '.join(sorted(kinds)) or 'none'})")
    return {spec.name: spec.type for spec in kinds[kind].fields}


def parse_value(field: str, text: str, field_type: resource_pb2.FieldType.ValueType) -> Scalar:
    """`text` as the type of `field`; a bad value names the field."""
    try:
        if field_type == resource_pb2.FIELD_TYPE_INTEGER:
            number = int(text)
            if not INT64_MIN <= number <= INT64_MAX:
                raise UsageError(f"{field}: {text!r} is out of range for a 64-bit integer")
            return number
        if field_type == resource_pb2.FIELD_TYPE_FLOAT:
            return float(text)
    except ValueError:
        type_name = output.enum_text(resource_pb2.FieldType.Name(field_type), "FIELD_TYPE_")
        raise UsageError(f"{field}: {text!r} is not a valid {type_name}") from None
    if field_type == resource_pb2.FIELD_TYPE_BOOLEAN:
        word = text.lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise UsageError(f"{field}: {text!r} is not a boolean (true/false, yes/no, 1/0)")
        return word in TRUE_WORDS
    return text


def split_assignment(option: str, text: str) -> tuple[str, str]:
    field, equals, value = text.partition("=")
    if not equals or not field:
        raise UsageError(f"{option} {text!r}: expected FIELD=VALUE")
    return field, value


def parse_where(items: Sequence[str], types: FieldTypes) -> dict[str, Any]:
    """`--where` constraints; a field given several times matches any of its values."""
    where: dict[str, list[Scalar]] = {}
    for item in items:
        field, text = split_assignment("--where", item)
        if field in COMMON_FIELDS:
            value: Scalar = text
        elif field in types:
            value = parse_value(field, text, types[field])
        elif not types:
            raise UsageError(f"--where {field}: a kind's own field needs --kind")
        else:
            raise UsageError(f"--where {field}: no such field (fields: {_names(types)})")
        where.setdefault(field, []).append(value)
    return {field: values[0] if len(values) == 1 else values for field, values in where.items()}


def parse_set(items: Sequence[str], types: FieldTypes) -> dict[str, Scalar]:
    """`--set` values of the kind's own fields."""
    fields: dict[str, Scalar] = {}
    for item in items:
        field, text = split_assignment("--set", item)
        if field not in types:
            raise UsageError(f"--set {field}: no such field (fields: {_names(types)})")
        if field in fields:
            raise UsageError(f"--set {field}: given twice")
        fields[field] = parse_value(field, text, types[field])
    return fields


def _names(types: FieldTypes) -> str:
    return ", ".join(types) or "none"
