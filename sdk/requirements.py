"""What a client asks for, in Python terms, and its wire form.

A constraint keyword is a field name and either one value (the field equals
it) or a collection of values (the field equals any of them), so
`request(Calculator, name=["calc1", "calc2"], group="bench-3")` reads like a
query. The SDK's requests and the CLI's `--where` both go through
`to_constraints`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from broker.api.field_values import to_field_value
from broker.v1 import lease_pb2

if TYPE_CHECKING:
    from sdk.base_resource import BaseResource

COLLECTIONS = (list, tuple, set, frozenset)


@dataclasses.dataclass(frozen=True)
class ResourceRequest:
    """`count` distinct resources of `resource_class`'s kind, each satisfying
    every constraint.

    Args:
        resource_class: the `BaseResource` subclass to build for each grant;
            its `DATA_CLASS` names the kind.
        count: how many resources, at least 1; more than 1 makes the lease
            give a list for this request.
        constraints: field name -> a value or a collection of accepted values.
    """

    resource_class: type[BaseResource]
    count: int = 1
    constraints: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count is at least 1, not {self.count}")

    @property
    def kind(self) -> str:
        return self.resource_class.DATA_CLASS.kind_name()

    def to_requirement(self, label: str) -> lease_pb2.Requirement:
        return lease_pb2.Requirement(
            kind=self.kind,
            constraints=to_constraints(self.constraints),
            count=self.count,
            label=label,
        )


def request(
    resource_class: type[BaseResource], *, count: int = 1, **constraints: Any
) -> ResourceRequest:
    """A `ResourceRequest`, for `BrokerClient.lease_many`."""
    return ResourceRequest(resource_class, count, constraints)


def to_constraints(constraints: Mapping[str, Any]) -> list[lease_pb2.Constraint]:
    """One `Constraint` per field: `equals` for a value, `any_of` for a
    list, tuple, set or frozenset of values."""
    return [_constraint(field, value) for field, value in constraints.items()]


def _constraint(field: str, value: Any) -> lease_pb2.Constraint:
    if isinstance(value, COLLECTIONS):
        return lease_pb2.Constraint(field=field, any_of=_value_list(value))
    return lease_pb2.Constraint(field=field, equals=to_field_value(value))


def _value_list(values: Iterable[Any]) -> lease_pb2.FieldValueList:
    return lease_pb2.FieldValueList(values=[to_field_value(value) for value in values])
