"""Turning a request's constraints into checked database filters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from broker.domain.errors import BrokerError, InvalidArgumentError, clip
from broker.domain.kinds import Kind, KindRegistry, check_value
from broker.domain.values import (
    COMMON_FILTER_FIELDS,
    COMPARISONS,
    TEXT_TESTS,
    Constraint,
    FieldSpec,
    FieldType,
    Scalar,
)
from broker.models.resource import Filter

MAX_VALUES = 256
# Fields a comparison orders: numbers, and instants.
NUMBER_TYPES = frozenset({FieldType.INTEGER, FieldType.FLOAT, FieldType.DATE_TIME})
TEXT_TYPES = frozenset({FieldType.STRING, FieldType.IP_ADDRESS})
_COMMON_SPECS = {
    name: FieldSpec(name, FieldType.STRING, True, None, "", 4096) for name in COMMON_FILTER_FIELDS
}

UnknownField = Callable[[str, str], BrokerError]
"""Builds the error for a constraint on a field the kind does not have,
given the constraint's path and a description."""


def resolve(
    kind: Kind | None,
    constraints: Sequence[Constraint],
    path: str,
    unknown_field: UnknownField,
    kinds: KindRegistry | None = None,
) -> list[Filter]:
    """Checks each constraint against the kind's fields (common fields only
    when no kind is given; through sub-resource fields, those of the
    sub-resource's kind in `kinds`) and returns the filters in stored form."""
    filters = []
    for index, constraint in enumerate(constraints):
        where = f"{path}[{index}]"
        if not constraint.field:
            raise InvalidArgumentError.of(f"{where}.field", "is required")
        spec = _spec_at(kind, constraint.field, where, unknown_field, kinds)
        _check_test(constraint, spec, where)
        if not 1 <= len(constraint.values) <= MAX_VALUES:
            raise InvalidArgumentError.of(
                where, f"needs a value to equal, or 1 to {MAX_VALUES} values in any_of"
            )
        values: list[Scalar | None] = []
        for position, value in enumerate(constraint.values):
            value_path = f"{where}.{constraint.test.value}" + (
                f".values[{position}]" if constraint.any_of else ""
            )
            if value is None:
                raise InvalidArgumentError.of(value_path, "a value is required")
            if constraint.test in TEXT_TESTS:
                values.append(_text(spec, value, value_path))
            elif constraint.test in COMPARISONS:
                # A bound need not be one of the field's choices.
                values.append(check_value(dataclasses.replace(spec, choices=()), value, value_path))
            else:
                values.append(check_value(spec, value, value_path))
        filters.append(
            Filter(constraint.field, tuple(values), constraint.test.value, constraint.negate)
        )
    return filters


def _spec_at(
    kind: Kind | None,
    field: str,
    where: str,
    unknown_field: UnknownField,
    kinds: KindRegistry | None,
) -> FieldSpec:
    """The field a constraint's path names: a common field, one of the
    kind's, or one of a sub-resource's (`sim.carrier`; `sim` and
    `sim.name` are the sub-resource's name)."""
    head, dot, rest = field.partition(".")
    spec = _COMMON_SPECS.get(head) or (kind.spec.field(head) if kind else None)
    if spec is None or (dot and spec.type != FieldType.REFERENCE):
        if spec is not None:
            raise unknown_field(
                where, f"{clip(field)!r}: {head} is no sub-resource field, so it has no fields"
            )
        known = [*COMMON_FILTER_FIELDS, *(f.name for f in kind.spec.fields)] if kind else []
        owner = f"kind {kind.name!r}" if kind else "a resource of any kind"
        raise unknown_field(
            where,
            f"{owner} has no field {clip(head)!r}"
            + (f" (fields: {', '.join(known)})" if known else " (name a kind)"),
        )
    if spec.type != FieldType.REFERENCE:
        return spec
    if not rest:
        return dataclasses.replace(spec, type=FieldType.STRING, choices=())
    child = kinds.find(spec.kind) if kinds is not None else None
    inner = _COMMON_SPECS.get(rest) or (child.spec.field(rest) if child else None)
    if inner is None or "." in rest:
        known = [*COMMON_FILTER_FIELDS, *(f.name for f in child.spec.fields)] if child else []
        raise unknown_field(
            where,
            f"{head} is a {spec.kind}, which has no field {clip(rest)!r}"
            + (f" (fields: {', '.join(known)})" if known else ""),
        )
    return dataclasses.replace(inner, name=f"{head}.{inner.name}")


def _check_test(constraint: Constraint, spec: FieldSpec, where: str) -> None:
    """A comparison needs a number field, a text test a text field."""
    test = constraint.test
    if test in COMPARISONS and spec.type not in NUMBER_TYPES:
        raise InvalidArgumentError.of(
            f"{where}.{test.value}",
            f"{spec.name} is {_article(spec.type)} field: {test.value} compares numbers "
            "and date-times (use equals or any_of)",
        )
    if test in TEXT_TESTS and spec.type not in TEXT_TYPES:
        raise InvalidArgumentError.of(
            f"{where}.{test.value}",
            f"{spec.name} is {_article(spec.type)} field: {test.value} looks into text "
            "(use equals, any_of or a comparison)",
        )


def _text(spec: FieldSpec, value: object, path: str) -> str:
    """The text a prefix or contains test looks for: a part of a value,
    so it is not checked as a whole one (an IP address's first bytes)."""
    if not isinstance(value, str):
        raise InvalidArgumentError.of(path, f"{spec.name} is text: give a string")
    if not value:
        raise InvalidArgumentError.of(path, "needs the text to look for")
    if spec.max_length and len(value) > spec.max_length:
        raise InvalidArgumentError.of(
            path, f"is longer than {spec.name} can be ({spec.max_length} characters)"
        )
    return value


def _article(field_type: FieldType) -> str:
    name = field_type.name.lower().replace("_", " ")
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"
