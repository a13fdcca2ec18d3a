"""Run-time overrides of what tests declare, as Rotest's `rotest -r` gave
them: `--resource calc=name=calc2` makes every test's `calc` the resource
named calc2, `--resource calc.group=QA` (the same, spelled as Rotest's
nested form) takes any calculator of group QA, and Django's lookups work as
in `request()`: `calc=port__gte=1024`, `calc=name__in=calc1,calc2`, and
through a sub-resource field, `phone=sim__carrier=att`.

An override replaces the declaration's constraints on that field (whatever
their lookups) and keeps the others. Its value is text, typed as the kind's field is (`ListKinds`),
so `--resource calc=port=x` is refused, naming the field, before any lease
is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from broker.v1 import resource_pb2
from sdk import field_text
from sdk.field_text import FieldTextError
from sdk.requirements import ResourceRequest, parse_keyword


class OverrideError(ValueError):
    """An override is malformed or does not fit its field; the message
    quotes the option as it was given."""


@dataclasses.dataclass(frozen=True)
class Override:
    """`--resource LABEL=FIELD=VALUE`, or `LABEL.FIELD=VALUE`."""

    label: str
    field: str
    text: str
    given: str

    def __str__(self) -> str:
        return self.given


def parse_override(given: str) -> Override:
    """One override as typed; a malformed one is an `OverrideError`."""
    head, equals, rest = given.partition("=")
    if "." in head:
        label, _, field = head.partition(".")
        text = rest
    else:
        label = head
        field, second, text = rest.partition("=")
        equals = equals and second
    if not equals or not label or not field:
        raise OverrideError(
            f"--resource {given!r}: expected NAME=FIELD=VALUE (or NAME.FIELD=VALUE), "
            "e.g. calc=name=calc2"
        )
    if not label.isidentifier():
        raise OverrideError(f"--resource {given!r}: {label!r} is not a resource's name")
    if "." in field:
        raise OverrideError(
            f"--resource {given!r}: {label} has no sub-resource field "
            f"{field.partition('.')[0]!r} to reach {field!r} through"
        )
    # Its lookup is checked once the kind's fields are known: `sim__carrier`
    # may be a path through a sub-resource field rather than a lookup.
    return Override(label, field, text, given)


def parse_overrides(given: Iterable[str]) -> list[Override]:
    """Every override; a field overridden twice for one name is refused."""
    overrides = [parse_override(text) for text in given]
    seen: dict[tuple[str, str], Override] = {}
    for override in overrides:
        key = (override.label, override.field)
        if key in seen:
            raise OverrideError(
                f"--resource {override.given!r}: {override.label}.{override.field} "
                f"is already set by {seen[key].given!r}"
            )
        seen[key] = override
    return overrides


def unknown_labels(overrides: Iterable[Override], declared: Iterable[str]) -> list[Override]:
    """The overrides naming a resource no test declares."""
    known = set(declared)
    return [override for override in overrides if override.label not in known]


KindsLookup = Callable[[], list[resource_pb2.Kind]]


def _typed(override: Override, types: field_text.FieldTypes) -> Any:
    """An override's value as its field's type: text for a text test, a
    list for `__in` (comma-separated), else one value."""
    field, test, _ = parse_keyword(override.field, [path for path in types if "." in path])
    if test in ("prefix", "contains"):
        field_text.known_field(field, types)
        return override.text
    if test == "any_of":
        return [
            field_text.constraint_value(field, part, types) for part in override.text.split(",")
        ]
    return field_text.constraint_value(field, override.text, types)


class Overrides:
    """The overrides of one run, applied to each test's requests; the kinds'
    field types are asked of the broker once, on first need."""

    def __init__(self, overrides: Iterable[Override], list_kinds: KindsLookup) -> None:
        self._by_label: dict[str, list[Override]] = {}
        for override in overrides:
            self._by_label.setdefault(override.label, []).append(override)
        self._list_kinds = list_kinds
        self._kinds: list[resource_pb2.Kind] | None = None

    def __bool__(self) -> bool:
        return bool(self._by_label)

    def apply(self, requests: Mapping[str, ResourceRequest]) -> dict[str, ResourceRequest]:
        """`requests` with the overrides of their labels in place."""
        result = dict(requests)
        for label, overrides in self._by_label.items():
            if label not in result:
                continue
            request = result[label]
            if request.is_service:
                # A service's values are its own: they are taken as text.
                values: dict[str, Any] = {o.field: o.text for o in overrides}
            else:
                types = self._types(request.kind)
                values = {}
                for override in overrides:
                    try:
                        values[override.field] = _typed(override, types)
                    except ValueError as error:  # FieldTextError, or an unknown lookup
                        raise OverrideError(f"--resource {override.given!r}: {error}") from None
            try:
                result[label] = request.with_constraints(**values)
            except ValueError as error:
                raise OverrideError(f"--resource: {error}") from None
        return result

    def _types(self, kind: str) -> field_text.FieldTypes:
        if self._kinds is None:
            self._kinds = self._list_kinds()
        try:
            return field_text.field_types(self._kinds, kind)
        except FieldTextError as error:
            raise OverrideError(f"--resource: {error}") from None
