"""Small builders of domain values for the test kinds, and readers of what
the unit tests check."""

from __future__ import annotations

import pytest

from broker.domain.values import Constraint, EventType, NewResource, Requirement
from broker.models.event import Event


def calc(name: str, ip_address: str = "127.0.0.1", **common) -> NewResource:
    return NewResource(name, "Calculator", {"ip_address": ip_address}, **common)


def phone(name: str, os: str = "android", fields: dict | None = None, **common) -> NewResource:
    return NewResource(name, "Phone", {"os": os, **(fields or {})}, **common)


def licence(name: str, product: str = "matlab", **common) -> NewResource:
    return NewResource(name, "Licence", {"product": product}, **common)


def need(kind: str, count: int = 1, label: str = "", **equals) -> Requirement:
    """A requirement whose constraints are `field == value` for each keyword."""
    constraints = tuple(Constraint(field, (value,)) for field, value in equals.items())
    return Requirement(kind, constraints, count, label)


def events_of(event_type: EventType) -> list[Event]:
    """The stored events of one type, in commit order."""
    return list(Event.select().where(Event.type == event_type.value).order_by(Event.id))


def field_of(error: pytest.ExceptionInfo) -> str:
    """The field named by the first violation of an InvalidArgumentError."""
    return error.value.violations[0].field
