"""Field values typed in as text (`broker --set port=1357`, pytest's
`--resource calc=port=1357`), read as the kind's field types that
`ListKinds` describes, so that a bad value is refused, naming its field,
before anything is sent."""

from __future__ import annotations

import datetime

from broker.field_values import INT64_MAX, INT64_MIN, Scalar
from broker.v1 import resource_pb2

# Common fields a constraint may name; all of them are text.
COMMON_FIELDS = ("name", "group", "comment")
TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})

# A kind's own field name -> its `resource_pb2.FieldType`.
FieldTypes = dict[str, resource_pb2.FieldType.ValueType]


class FieldTextError(ValueError):
    """A value typed in does not fit its field; the message names the field."""


def field_types(kinds: list[resource_pb2.Kind], kind: str) -> FieldTypes:
    """The kind's own fields and their types, from `ListKinds`' answer."""
    known = {described.name: described for described in kinds}
    if kind not in known:
        raise FieldTextError(f"no kind {kind!r} (known: {', '.join(sorted(known)) or 'none'})")
    return {spec.name: spec.type for spec in known[kind].fields}


def parse_value(field: str, text: str, field_type: resource_pb2.FieldType.ValueType) -> Scalar:
    """`text` as the type of `field`; a bad value names the field."""
    try:
        if field_type == resource_pb2.FIELD_TYPE_INTEGER:
            number = int(text)
            if not INT64_MIN <= number <= INT64_MAX:
                raise FieldTextError(f"{field}: {text!r} is out of range for a 64-bit integer")
            return number
        if field_type == resource_pb2.FIELD_TYPE_FLOAT:
            return float(text)
    except ValueError as error:
        if isinstance(error, FieldTextError):
            raise
        type_name = resource_pb2.FieldType.Name(field_type).removeprefix("FIELD_TYPE_").lower()
        raise FieldTextError(f"{field}: {text!r} is not a valid {type_name}") from None
    if field_type == resource_pb2.FIELD_TYPE_DATE_TIME:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise FieldTextError(
                f"{field}: {text!r} is not a date-time (ISO 8601, e.g. 2026-12-01T09:30:00Z; "
                "local time unless it names a zone)"
            ) from None
        return moment if moment.tzinfo else moment.astimezone()
    if field_type == resource_pb2.FIELD_TYPE_BOOLEAN:
        word = text.lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise FieldTextError(f"{field}: {text!r} is not a boolean (true/false, yes/no, 1/0)")
        return word in TRUE_WORDS
    return text


def known_field(field: str, types: FieldTypes) -> str:
    """`field` if it is a common field or one of the kind's own."""
    if field not in COMMON_FIELDS and field not in types:
        fields = ", ".join([*COMMON_FIELDS, *types])
        raise FieldTextError(f"{field}: no such field (fields: {fields})")
    return field


def constraint_value(field: str, text: str, types: FieldTypes) -> Scalar:
    """The value of a constraint on `field` (a common field or one of the
    kind's own) typed in as `text`."""
    if known_field(field, types) in COMMON_FIELDS:
        return text
    return parse_value(field, text, types[field])
