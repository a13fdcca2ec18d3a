"""Turning a request's constraints into checked database filters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from broker.domain.errors import BrokerError, InvalidArgumentError, clip
from broker.domain.kinds import Kind, check_value
from broker.domain.values import COMMON_FILTER_FIELDS, Constraint, FieldSpec, FieldType
from broker.models.resource import Filter

MAX_VALUES = 256
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
) -> list[Filter]:
    """Checks each constraint against the kind's fields (common fields only
    when no kind is given) and returns the filters in stored form."""
    filters = []
    for index, constraint in enumerate(constraints):
        where = f"{path}[{index}]"
        if not constraint.field:
            raise InvalidArgumentError.of(f"{where}.field", "is required")
        spec = _COMMON_SPECS.get(constraint.field) or (
            kind.spec.field(constraint.field) if kind else None
        )
        if spec is None:
            known = [*COMMON_FILTER_FIELDS, *(f.name for f in kind.spec.fields)] if kind else []
            owner = f"kind {kind.name!r}" if kind else "a resource of any kind"
            raise unknown_field(
                where,
                f"{owner} has no field {clip(constraint.field)!r}"
                + (f" (fields: {', '.join(known)})" if known else " (name a kind)"),
            )
        if not 1 <= len(constraint.values) <= MAX_VALUES:
            raise InvalidArgumentError.of(
                where, f"needs a value to equal, or 1 to {MAX_VALUES} values in any_of"
            )
        values = []
        for position, value in enumerate(constraint.values):
            value_path = (
                f"{where}.any_of.values[{position}]" if constraint.any_of else (f"{where}.equals")
            )
            if value is None:
                raise InvalidArgumentError.of(value_path, "a value is required")
            values.append(check_value(spec, value, value_path))
        filters.append((constraint.field, tuple(values)))
    return filters
