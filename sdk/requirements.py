"""What a client asks for, in Python terms, and its wire form.

A constraint keyword is a field name and either one value (the field equals
it) or a collection of values (the field equals any of them), so
`request(Calculator, name=["calc1", "calc2"], group="bench-3")` reads like a
query; Django's lookups compare and search (`port__gte=1024`,
`name__startswith="calc"`, `group__not="QA"`). A keyword may reach through
a sub-resource field to the sub-resource's fields, as Django's lookups span
relationships: `sim__carrier="att"`, `sim__slots__gte=2` (the field paths
`sim.carrier`, `sim.slots`); `sim="sim1"` names the sub-resource. The SDK's
requests and the CLI's `--where` both go through `to_constraints`. Rotest's
form names the request first, for tests that declare their resources:
`request("calc", Calculator, name="calc")` is held as `self.calc`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import peewee

from broker.field_values import to_field_value
from broker.kind_data import ResourceData
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
        label: the name a test holds it under ("" when the caller names it,
            as `lease_many`'s keys do).
    """

    resource_class: type[BaseResource]
    count: int = 1
    constraints: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count is a whole number of at least 1, not {self.count!r}")
        if not (
            isinstance(self.resource_class, type) and hasattr(self.resource_class, "DATA_CLASS")
        ):
            raise TypeError(
                f"a request is for a BaseResource subclass, not {self.resource_class!r}"
            )
        if self.is_service and self.count != 1:
            raise ValueError(f"a service is requested one at a time, not {self.count}")
        if self.label and not self.label.isidentifier():
            raise ValueError(
                f"a request's name is a Python identifier (it becomes an attribute), "
                f"not {self.label!r}"
            )

    def with_constraints(self, **constraints: Any) -> ResourceRequest:
        """This request with `constraints` replacing every constraint on the
        same fields, whatever their lookups (`port__gte=1000` replaces
        `port=1357`)."""
        paths = field_paths(self.resource_class.DATA_CLASS)
        fields = {parse_keyword(keyword, paths)[0] for keyword in constraints}
        kept = {
            keyword: value
            for keyword, value in self.constraints.items()
            if parse_keyword(keyword, paths)[0] not in fields
        }
        return dataclasses.replace(self, constraints={**kept, **constraints})

    def named(self, label: str) -> ResourceRequest:
        """This request under the name `label`."""
        return dataclasses.replace(self, label=label)

    @property
    def is_service(self) -> bool:
        """A service's request is served here, with no lease: its
        constraints are the values the service is built from."""
        return self.resource_class.DATA_CLASS is None

    @property
    def kind(self) -> str:
        """The kind's name ("service" for a service)."""
        return self.resource_class.kind_name()

    def to_requirement(self, label: str) -> lease_pb2.Requirement:
        if self.is_service:
            raise ValueError(f"{label or self.kind}: a service is not asked of the broker")
        return lease_pb2.Requirement(
            kind=self.kind,
            constraints=to_constraints(self.constraints, self.resource_class.DATA_CLASS),
            count=self.count,
            label=label,
        )


def request(*args: Any, count: int = 1, **constraints: Any) -> ResourceRequest:
    """A `ResourceRequest`: `request(Calculator, name="calc")` for
    `BrokerClient.lease_many`, or Rotest's `request("calc", Calculator,
    name="calc")`, naming it for a test that declares it."""
    if len(args) == 1:
        return ResourceRequest(args[0], count, constraints)
    if len(args) == 2 and isinstance(args[0], str):
        return ResourceRequest(args[1], count, constraints, label=args[0])
    raise TypeError(
        "request() takes the resource class, or a name and the resource class: "
        'request(Calculator, ...) or request("calc", Calculator, ...)'
    )


# Django's lookups, as Rotest's queries spelled them: `port__gte=1000`.
# `not_` before one (`name__not_startswith="old-"`), or `__not` alone,
# negates it.
LOOKUPS = {
    "exact": "equals",
    "in": "any_of",
    "gt": "greater_than",
    "gte": "at_least",
    "lt": "less_than",
    "lte": "at_most",
    "startswith": "prefix",
    "contains": "contains",
}
TEXT_TESTS = ("prefix", "contains")


def to_constraints(
    constraints: Mapping[str, Any],
    data_class: type[ResourceData] | str | None = None,
) -> list[lease_pb2.Constraint]:
    """One `Constraint` per keyword: `field=value` equals (a list, tuple,
    set or frozenset: any of), and Django's lookups `field__in`, `__gt`,
    `__gte`, `__lt`, `__lte`, `__startswith`, `__contains`, each negated by
    `not_` (`__not_in`) or, for equality, `__not`. A bad one is a
    `ValueError` or `TypeError` naming its keyword.

    `data_class` (the kind's data, or its name, looked for among the
    `ResourceData` models imported) tells `sim__carrier`, a path through
    the sub-resource field `sim`, from an unknown lookup `carrier`; a
    path followed by a lookup (`sim__slots__gte`) or spelled with dots
    (`{"sim.carrier": ...}`) needs none."""
    if isinstance(data_class, str):
        data_class = data_class_named(data_class)
    paths = field_paths(data_class)
    return [_constraint(keyword, value, paths) for keyword, value in constraints.items()]


def parse_keyword(keyword: str, paths: Collection[str] = ()) -> tuple[str, str | None, bool]:
    """`(field, test, negate)` of a constraint keyword (`port__not_gte` is
    `("port", "at_least", True)`); test None: by the value's type. A
    keyword that spells one of `paths` (`sim__carrier` for `sim.carrier`)
    is that field. An unknown lookup is a `ValueError` naming the known
    ones."""
    if keyword.replace("__", ".") in paths:
        return keyword.replace("__", "."), None, False
    field, _, lookup = keyword.rpartition("__")
    if not field:
        return keyword, None, False
    negate = lookup == "not" or lookup.startswith("not_")
    name = lookup.removeprefix("not_") if lookup != "not" else ""
    if name and name not in LOOKUPS:
        known = ", ".join(["not", *LOOKUPS, *(f"not_{n}" for n in LOOKUPS)])
        raise ValueError(f"{keyword}: no lookup {lookup!r} (lookups: {known})")
    return field.replace("__", "."), LOOKUPS.get(name), negate


def reference_fields(data_class: type[ResourceData] | None) -> dict[str, type[ResourceData]]:
    """The sub-resource fields of a kind's data (its `ForeignKeyField`s to
    another kind's data), in declaration order: field name -> that data
    class."""
    if data_class is None:
        return {}
    return {
        field.name: field.rel_model
        for field in data_class._meta.sorted_fields
        if isinstance(field, peewee.ForeignKeyField)
    }


# What a path through a sub-resource field reaches beside its own fields.
PATH_COMMON_FIELDS = ("name", "group", "comment")


def field_paths(data_class: type[ResourceData] | None) -> frozenset[str]:
    """The dotted paths through a kind's sub-resource fields to their
    kinds' fields (`sim.carrier`, `sim.name`), and through theirs."""
    return frozenset(_paths(data_class, "", set()))


def _paths(data_class: type[ResourceData] | None, prefix: str, seen: set[type]) -> list[str]:
    paths: list[str] = []
    for name, target in reference_fields(data_class).items():
        below = f"{prefix}{name}."
        own = [field.name for field in target._meta.sorted_fields if not field.primary_key]
        paths += [below + field for field in (*PATH_COMMON_FIELDS, *own)]
        if target not in seen:
            paths += _paths(target, below, seen | {target})
    return paths


def data_class_named(kind: str) -> type[ResourceData] | None:
    """The one imported `ResourceData` model of the kind named `kind`, if
    there is exactly one."""
    found: list[type[ResourceData]] = []
    pending = list(ResourceData.__subclasses__())
    while pending:
        model = pending.pop()
        pending += model.__subclasses__()
        if model.kind_name() == kind and model not in found:
            found.append(model)
    return found[0] if len(found) == 1 else None


def _constraint(keyword: str, value: Any, paths: Collection[str] = ()) -> lease_pb2.Constraint:
    field, test, negate = parse_keyword(keyword, paths)
    if test is None:
        test = "any_of" if isinstance(value, COLLECTIONS) else "equals"
    message = lease_pb2.Constraint(field=field, negate=negate)
    if test == "any_of":
        if not isinstance(value, COLLECTIONS):
            raise TypeError(f"{keyword}: any of takes a list, tuple or set of values")
        message.any_of.CopyFrom(_value_list(value))
    elif test in TEXT_TESTS:
        if not isinstance(value, str):
            raise TypeError(f"{keyword}: {test} looks for text: give a string, not {value!r}")
        setattr(message, test, value)
    else:
        if isinstance(value, COLLECTIONS):
            raise TypeError(f"{keyword}: compares one value, not {type(value).__name__}")
        getattr(message, test).CopyFrom(to_field_value(value))
    return message


def _value_list(values: Iterable[Any]) -> lease_pb2.FieldValueList:
    return lease_pb2.FieldValueList(values=[to_field_value(value) for value in values])
