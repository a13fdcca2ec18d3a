"""The registry of kinds: each `ResourceData` model described as a `KindSpec`,
and the checking of values against a kind's typed fields."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import math
import struct
from collections.abc import Iterable

import peewee

from broker.domain.errors import FieldViolation, InvalidArgumentError, NotFoundError, clip
from broker.domain.values import FieldSpec, FieldType, KindSpec, Scalar
from broker.kind_data import IPAddressField, ResourceData
from broker.models.resource import CHILD, PARENT

TEXT_FIELD_MAX_LENGTH = 4096
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# The width of a numeric field's storage, by peewee column type, where the
# databases disagree taking the narrower: PostgreSQL stores an IntegerField
# in 32 bits and a FloatField in a 32-bit REAL, where SQLite keeps 64. A
# value that a column would refuse on one database is refused on all.
_BITS = {
    "SMALLINT": 16,
    "INT": 32,
    "AUTO": 32,
    "BIGINT": 64,
    "BIGAUTO": 64,
    "FLOAT": 32,
    "DOUBLE": 64,
}
_DEFAULT_BITS = {FieldType.INTEGER: 32, FieldType.FLOAT: 64}

# Most specific first: IPAddressField is a CharField, BooleanField is not an IntegerField.
_FIELD_TYPES: tuple[tuple[type[peewee.Field], FieldType], ...] = (
    (peewee.ForeignKeyField, FieldType.REFERENCE),
    (IPAddressField, FieldType.IP_ADDRESS),
    (peewee.BooleanField, FieldType.BOOLEAN),
    (peewee.CharField, FieldType.STRING),
    (peewee.TextField, FieldType.STRING),
    (peewee.IntegerField, FieldType.INTEGER),
    (peewee.FloatField, FieldType.FLOAT),
    (peewee.DateTimeField, FieldType.DATE_TIME),
)


class KindDeclarationError(TypeError):
    """A `ResourceData` model declares something the broker cannot serve."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """A served kind: its public description and the model storing its fields."""

    spec: KindSpec
    model: type[ResourceData]
    # Its place in a tree of sub-resources: `PARENT` (it has sub-resource
    # fields), `CHILD` (it is some kind's sub-resource), or "".
    tree: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ownable(self) -> bool:
        return self.spec.ownable

    @property
    def references(self) -> tuple[FieldSpec, ...]:
        """Its sub-resource fields, in declaration order."""
        return tuple(f for f in self.spec.fields if f.type == FieldType.REFERENCE)

    def reference_ids(self, data: ResourceData) -> dict[str, int | None]:
        """The resource ids a kind row's sub-resource fields hold, read
        without loading the rows they point to."""
        return {spec.name: data.__data__.get(spec.name) for spec in self.references}


def describe(model: type[ResourceData]) -> KindSpec:
    """Reads a kind's public description off its model."""
    fields = []
    for field in model._meta.sorted_fields:
        if field.name == "resource":
            continue
        field_type = next((t for cls, t in _FIELD_TYPES if isinstance(field, cls)), None)
        if field_type is None:
            raise KindDeclarationError(
                f"{model.__name__}.{field.name}: {type(field).__name__} is not a supported "
                "field type (use CharField, TextField, IntegerField, FloatField, "
                "BooleanField, DateTimeField or IPAddressField)"
            )
        if field_type == FieldType.REFERENCE:
            _check_reference(model, field)
        if field_type == FieldType.DATE_TIME and field.default is not None:
            raise KindDeclarationError(
                f"{model.__name__}.{field.name}: a date-time field has no default (a naive "
                "`datetime.now` would be the broker's local time): make it null=True"
            )
        default = field.default() if callable(field.default) else field.default
        if field_type in (FieldType.STRING, FieldType.IP_ADDRESS):
            max_length = getattr(field, "max_length", None) or TEXT_FIELD_MAX_LENGTH
        else:
            max_length = 0
        bits = _BITS.get(field.field_type, _DEFAULT_BITS.get(field_type, 0))
        choices = _choices(model, field)
        if field_type == FieldType.REFERENCE:
            max_length, bits = 128, 0
        fields.append(
            FieldSpec(
                name=field.name,
                type=field_type,
                required=not field.null and default is None,
                default=default,
                doc=field.help_text or "",
                max_length=max_length,
                bits=bits,
                choices=choices,
                kind=field.rel_model.kind_name() if field_type == FieldType.REFERENCE else "",
            )
        )
    doc = " ".join((model.__doc__ or "").split())
    return KindSpec(
        model.kind_name(), bool(model.OWNABLE), tuple(fields), doc, float(model.LOCK_DELAY)
    )


def _check_reference(model: type[ResourceData], field: peewee.ForeignKeyField) -> None:
    """A sub-resource field points to another kind's data, by its key."""
    where = f"{model.__name__}.{field.name}"
    target = field.rel_model
    if not (isinstance(target, type) and issubclass(target, ResourceData)):
        raise KindDeclarationError(
            f"{where}: a ForeignKeyField names a sub-resource, so it must point to another "
            f"kind's ResourceData, not {getattr(target, '__name__', target)!r}"
        )
    if target is model:
        raise KindDeclarationError(f"{where}: a kind cannot be a sub-resource of itself")
    if field.rel_field is not target.resource:
        raise KindDeclarationError(f"{where}: a sub-resource field points to its kind's key")
    if field.default is not None:
        raise KindDeclarationError(
            f"{where}: a sub-resource field has no default (make it null=True, or required)"
        )


def _choices(model: type[ResourceData], field: peewee.Field) -> tuple[Scalar, ...]:
    """A field's `choices`, as Django and peewee declare them: values, or
    `(value, label)` pairs."""
    declared = field.choices or ()
    choices = tuple(c[0] if isinstance(c, (tuple, list)) else c for c in declared)
    if any(isinstance(c, (dict, set)) or c is None for c in choices):
        raise KindDeclarationError(
            f"{model.__name__}.{field.name}: choices are values or (value, label) pairs"
        )
    return choices


class KindRegistry:
    """The kinds this broker serves, by name; duplicates are refused."""

    def __init__(self, models: Iterable[type[ResourceData]]):
        self._kinds: dict[str, Kind] = {}
        for model in models:
            kind = Kind(describe(model), model)
            if kind.name in self._kinds:
                raise KindDeclarationError(
                    f"kind {kind.name!r} is declared twice "
                    f"({self._kinds[kind.name].model.__module__} and {model.__module__})"
                )
            self._kinds[kind.name] = kind
        self._parents: dict[str, set[str]] = {}
        for kind in self._kinds.values():
            for spec in kind.references:
                self._check_tree(kind, spec)
                self._parents.setdefault(spec.kind, set()).add(kind.name)
        for name, kind in self._kinds.items():
            place = PARENT if kind.references else CHILD if name in self._parents else ""
            self._kinds[name] = dataclasses.replace(kind, tree=place)

    def _check_tree(self, kind: Kind, spec: FieldSpec) -> None:
        """Sub-resources are resources of a served, ownable kind, one level
        deep: a kind with sub-resources is no one's sub-resource."""
        where = f"{kind.model.__name__}.{spec.name}"
        child = self._kinds.get(spec.kind)
        if child is None:
            raise KindDeclarationError(
                f"{where}: its kind {spec.kind!r} is not served: add its ResourceData to the "
                "configuration's kinds"
            )
        if not (kind.ownable and child.ownable):
            raise KindDeclarationError(
                f"{where}: a resource and its sub-resources are held by one lease, so both "
                "kinds must be ownable"
            )
        if child.references:
            raise KindDeclarationError(
                f"{where}: {child.name} has sub-resources of its own; sub-resources are one "
                "level deep"
            )

    def parents_of(self, kind_name: str) -> frozenset[str]:
        """The kinds that have sub-resources of this kind."""
        return frozenset(self._parents.get(kind_name, ()))

    def family(self, kind_names: Iterable[str]) -> set[str]:
        """The kinds, with the kinds of their sub-resources and of their
        parents: a grant of one changes what the others may be granted."""
        result = set(kind_names)
        for name in list(result):
            kind = self._kinds.get(name)
            if kind is not None:
                result.update(spec.kind for spec in kind.references)
            result.update(self._parents.get(name, ()))
        return result

    def __iter__(self):
        return iter(sorted(self._kinds.values(), key=lambda k: k.name))

    def find(self, name: str) -> Kind | None:
        return self._kinds.get(name)

    def get(self, name: str) -> Kind:
        kind = self._kinds.get(name)
        if kind is None:
            raise NotFoundError("kind", name)
        return kind

    @property
    def models(self) -> tuple[type[ResourceData], ...]:
        return tuple(kind.model for kind in self)


def check_value(spec: FieldSpec, value: Scalar | None, path: str) -> Scalar | None:
    """Returns `value` in its stored form, or raises INVALID_ARGUMENT naming
    `path`: of the field's type, in its range, one of its choices if it
    has some. None clears an optional field."""
    stored = _check_type(spec, value, path)
    if stored is not None and spec.choices and stored not in spec.choices:
        allowed = ", ".join(repr(choice) for choice in spec.choices)
        raise InvalidArgumentError.of(
            path, f"{spec.name} must be one of {allowed}, not {clip(repr(stored))}"
        )
    return stored


def _check_type(spec: FieldSpec, value: Scalar | None, path: str) -> Scalar | None:
    """Returns `value` in its stored form, or raises INVALID_ARGUMENT naming
    `path`. None clears an optional field."""
    if value is None:
        if spec.required:
            raise InvalidArgumentError.of(path, f"{spec.name} is required")
        return None
    expected = {
        FieldType.STRING: "a string",
        FieldType.IP_ADDRESS: "a string holding an IP address",
        FieldType.INTEGER: "an integer",
        FieldType.FLOAT: "a number",
        FieldType.BOOLEAN: "a boolean",
        FieldType.DATE_TIME: "a date-time",
        FieldType.REFERENCE: f"the name of a {spec.kind} resource",
    }[spec.type]
    wrong_type = InvalidArgumentError(
        FieldViolation(path, f"{spec.name} must be {expected}, not {type(value).__name__}")
    )
    if spec.type == FieldType.DATE_TIME:
        if not isinstance(value, datetime.datetime):
            raise wrong_type
        # Stored as UTC without a zone, as both databases read it back.
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    if spec.type in (FieldType.STRING, FieldType.IP_ADDRESS, FieldType.REFERENCE):
        if not isinstance(value, str):
            raise wrong_type
        if spec.max_length and len(value) > spec.max_length:
            raise InvalidArgumentError.of(
                path, f"{spec.name} is longer than {spec.max_length} characters"
            )
        if spec.type == FieldType.IP_ADDRESS:
            try:
                return str(ipaddress.ip_address(value))
            except ValueError:
                raise InvalidArgumentError.of(
                    path, f"{clip(value)!r} is not an IPv4 or IPv6 address"
                ) from None
        return value
    if spec.type == FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise wrong_type
        return value
    if isinstance(value, bool):
        raise wrong_type
    if spec.type == FieldType.INTEGER:
        if not isinstance(value, int):
            raise wrong_type
        bits = spec.bits or 64
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if not low <= value <= high:
            raise InvalidArgumentError.of(
                path,
                f"{spec.name} must be {low} to {high} (a {bits}-bit integer field), "
                f"not {clip(str(value))}",
            )
        return value
    if not isinstance(value, int | float):
        raise wrong_type
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidArgumentError.of(path, f"{spec.name} must be a finite number")
    if spec.bits == 32 and not _fits_float32(number):
        raise InvalidArgumentError.of(
            path,
            f"{spec.name} must be 0 or of magnitude 1.4e-45 to 3.4e+38 "
            f"(a 32-bit float field), not {number:g}",
        )
    return number


def _fits_float32(number: float) -> bool:
    """Whether a 32-bit float holds `number` without overflowing to infinity
    or underflowing to 0 (rounding is fine)."""
    try:
        (narrowed,) = struct.unpack("<f", struct.pack("<f", number))
    except OverflowError:
        return False
    return narrowed != 0 or number == 0
