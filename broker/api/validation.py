"""Generic request checks read off the contract itself: fields annotated
`REQUIRED` must be set, strings and lists have a size cap, enum numbers must
be defined. Rules about values (ranges, formats) belong to the domain.
"""

from __future__ import annotations

import functools

from google.api import field_behavior_pb2
from google.protobuf import descriptor
from google.protobuf.message import Message

from broker.domain.errors import FieldViolation, InvalidArgumentError

MAX_STRING = 4096
MAX_REPEATED = 1024

_FD = descriptor.FieldDescriptor


@functools.cache
def _plan(message_descriptor: descriptor.Descriptor):
    """Per field: (field, required, output_only), computed once per type."""
    plan = []
    for field in message_descriptor.fields:
        behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        plan.append(
            (
                field,
                field_behavior_pb2.REQUIRED in behaviors,
                field_behavior_pb2.OUTPUT_ONLY in behaviors,
            )
        )
    return tuple(plan)


def _is_set(message: Message, field: _FD) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return message.HasField(field.name)
    return getattr(message, field.name) != field.default_value


def violations(message: Message, path: str = "") -> list[FieldViolation]:
    """Every generic violation in `message`, named by field path."""
    found: list[FieldViolation] = []
    for field, required, output_only in _plan(message.DESCRIPTOR):
        if output_only:
            continue
        where = f"{path}{field.name}"
        if required and not _is_set(message, field):
            found.append(FieldViolation(where, "is required"))
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if len(value) > MAX_REPEATED:
                found.append(FieldViolation(where, f"has more than {MAX_REPEATED} entries"))
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                item_path = f"{where}.{key}"
                if isinstance(key, str) and len(key) > MAX_STRING:
                    found.append(FieldViolation(where, "has a key that is too long"))
                if value_field.message_type is not None:
                    found.extend(violations(item, f"{item_path}."))
                else:
                    found.extend(_scalar(value_field, item, item_path))
        elif field.is_repeated:
            if len(value) > MAX_REPEATED:
                found.append(FieldViolation(where, f"has more than {MAX_REPEATED} items"))
                continue
            for index, item in enumerate(value):
                item_path = f"{where}[{index}]"
                if field.message_type is not None:
                    found.extend(violations(item, f"{item_path}."))
                else:
                    found.extend(_scalar(field, item, item_path))
        elif field.message_type is not None:
            if message.HasField(field.name):
                found.extend(violations(value, f"{where}."))
        else:
            found.extend(_scalar(field, value, where))
    return found


def _scalar(field: _FD, value, where: str) -> list[FieldViolation]:
    if field.type == _FD.TYPE_STRING and len(value) > MAX_STRING:
        return [FieldViolation(where, f"is longer than {MAX_STRING} characters")]
    if field.type == _FD.TYPE_ENUM and field.enum_type.values_by_number.get(value) is None:
        return [FieldViolation(where, f"{value} is not a {field.enum_type.name} value")]
    return []


def check(message: Message) -> None:
    """Raises INVALID_ARGUMENT naming every generic violation."""
    found = violations(message)
    if found:
        raise InvalidArgumentError(found)
