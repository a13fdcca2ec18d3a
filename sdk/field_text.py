"""Field values typed in as text (`broker --set port=1357`, pytest's
`--resource calc=port=1357`), read as the kind's field types that
`ListKinds` describes, so that a bad value is refused, naming its field,
before anything is sent.

A sub-resource field (`FIELD_TYPE_REFERENCE`) takes the name of the
resource it holds (`--set sim=sim1`); a constraint may also name a path
through it to the sub-resource's fields (`sim.carrier`, `sim.name`),
typed as that kind declares them.
"""

from __future__ import annotations

import datetime

from broker.field_values import INT64_MAX, INT64_MIN, Scalar
from broker.v1 import resource_pb2

# Common fields a constraint may name; all of them are text.
COMMON_FIELDS = ("name", "group", "comment")
TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})

# A kind's own field name -> its `resource_pb2.FieldType`; for a kind with
# sub-resource fields, also each path through them (`sim.carrier`,
# `sim.name`), which only constraints name.
FieldTypes = dict[str, resource_pb2.FieldType.ValueType]


class FieldTextError(ValueError):
    """A value typed in does not fit its field; the message names the field."""


def field_types(kinds: list[resource_pb2.Kind], kind: str) -> FieldTypes:
    """The kind's own fields and their types, from `ListKinds`' answer, then
    the paths through its sub-resource fields."""
    known = {described.name: described for described in kinds}
    if kind not in known:
        raise FieldTextError(f"no kind {kind!r} (known: {', '.join(sorted(known)) or 'none'})")
    types = {spec.name: spec.type for spec in known[kind].fields}
    types.update(_paths(known, kind, "", {kind}))
    return types


def _paths(
    known: dict[str, resource_pb2.Kind], kind: str, prefix: str, seen: set[str]
) -> FieldTypes:
    """The paths through `kind`'s sub-resource fields, below `prefix`."""
    paths: FieldTypes = {}
    for spec in known[kind].fields:
        if spec.type != resource_pb2.FIELD_TYPE_REFERENCE or spec.kind not in known:
            continue
        below = f"{prefix}{spec.name}."
        for common in COMMON_FIELDS:
            paths[below + common] = resource_pb2.FIELD_TYPE_STRING
        for sub in known[spec.kind].fields:
            paths[below + sub.name] = sub.type
        if spec.kind not in seen:
            paths.update(_paths(known, spec.kind, below, seen | {spec.kind}))
    return paths


def own_fields(types: FieldTypes) -> list[str]:
    """The kind's own fields among `types`, without the paths through them."""
    return [field for field in types if "." not in field]


def parse_value(field: str, text: str, field_type: resource_pb2.FieldType.ValueType) -> Scalar:
    """`text` as the type of `field`; a bad value names the field. A
    sub-resource field's value is the name of the resource it holds."""
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
    """`field` if it is a common field, one of the kind's own, or a path
    through a sub-resource field to one of the sub-resource's."""
    if field not in COMMON_FIELDS and field not in types:
        head = field.partition(".")[0]
        if "." in field and types.get(head) != resource_pb2.FIELD_TYPE_REFERENCE:
            raise FieldTextError(
                f"{field}: {head!r} is no sub-resource field to reach {field!r} through"
            )
        fields = ", ".join([*COMMON_FIELDS, *own_fields(types)])
        raise FieldTextError(f"{field}: no such field (fields: {fields})")
    return field


def constraint_value(field: str, text: str, types: FieldTypes) -> Scalar:
    """The value of a constraint on `field` (a common field, one of the
    kind's own, or a path through a sub-resource field) typed in as `text`."""
    if known_field(field, types) in COMMON_FIELDS:
        return text
    return parse_value(field, text, types[field])
