"""Generic request checks read off the contract itself: fields annotated
`REQUIRED` must be set, strings and lists have a size cap, strings hold no
NUL character, enum numbers must be defined, and a request's lists and maps
together hold at most `MAX_ITEMS` entries. Rules about values (ranges,
formats) belong to the domain.

Checking is bounded: it stops at the first `MAX_VIOLATIONS` violations, and
past `MAX_ITEMS` entries (INVALID_ARGUMENT naming the limit), so its cost
does not grow with what a request holds. It runs on a worker thread, never
on the event loop (see `broker.api.errors`).
"""

from __future__ import annotations

import contextlib
import functools

from google.api import field_behavior_pb2
from google.protobuf import descriptor
from google.protobuf.message import Message

from broker.domain.errors import FieldViolation, InvalidArgumentError, clip

MAX_STRING = 4096
MAX_REPEATED = 1024
# Entries of every list and map of one request together.
MAX_ITEMS = 16_384
# Violations named in one error.
MAX_VIOLATIONS = 16

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


class _Enough(Exception):
    """Stops the walk: enough violations found, or the item budget spent."""


class _Walk:
    """One request's walk: the violations found and the entries counted."""

    def __init__(self) -> None:
        self.found: list[FieldViolation] = []
        self.items = 0

    def add(self, where: str, description: str) -> None:
        self.found.append(FieldViolation(where, description))
        if len(self.found) >= MAX_VIOLATIONS:
            raise _Enough

    def count(self, where: str, entries: int) -> None:
        self.items += entries
        if self.items > MAX_ITEMS:
            self.add(
                where,
                f"makes the request hold more than {MAX_ITEMS} list items and map entries "
                "in all (the limit per request)",
            )
            raise _Enough

    def message(self, message: Message, path: str) -> None:
        for field, required, output_only in _plan(message.DESCRIPTOR):
            if output_only:
                continue
            where = f"{path}{field.name}"
            if required and not _is_set(message, field):
                self.add(where, "is required")
                continue
            value = getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                self.map(field, value, where)
            elif field.is_repeated:
                if len(value) > MAX_REPEATED:
                    self.add(where, f"has more than {MAX_REPEATED} items")
                    continue
                self.count(where, len(value))
                for index, item in enumerate(value):
                    item_path = f"{where}[{index}]"
                    if field.message_type is not None:
                        self.message(item, f"{item_path}.")
                    else:
                        self.scalar(field, item, item_path)
            elif field.message_type is not None:
                if message.HasField(field.name):
                    self.message(value, f"{where}.")
            else:
                self.scalar(field, value, where)

    def map(self, field: _FD, value, where: str) -> None:
        if len(value) > MAX_REPEATED:
            self.add(where, f"has more than {MAX_REPEATED} entries")
            return
        self.count(where, len(value))
        entry = field.message_type
        assert entry is not None, "a map field's entries are messages"
        value_field = entry.fields_by_name["value"]
        for key, item in value.items():
            if isinstance(key, str):
                if len(key) > MAX_STRING:
                    self.add(where, "has a key that is too long")
                    continue
                if "\0" in key:
                    self.add(where, "has a key that holds a NUL character")
                    continue
            item_path = f"{where}.{clip(str(key))}"
            if value_field.message_type is not None:
                self.message(item, f"{item_path}.")
            else:
                self.scalar(value_field, item, item_path)

    def scalar(self, field: _FD, value, where: str) -> None:
        if field.type == _FD.TYPE_STRING:
            if len(value) > MAX_STRING:
                self.add(where, f"is longer than {MAX_STRING} characters")
            elif "\0" in value:
                self.add(where, "must not hold a NUL character")
        elif field.type == _FD.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None, "an enum field names its enum"
            if enum.values_by_number.get(value) is None:
                self.add(where, f"{value} is not a {enum.name} value")


def violations(message: Message, path: str = "") -> list[FieldViolation]:
    """The generic violations in `message`, named by field path: all of
    them, or the first `MAX_VIOLATIONS`."""
    walk = _Walk()
    with contextlib.suppress(_Enough):
        walk.message(message, path)
    return walk.found


def check(message: Message) -> None:
    """Raises INVALID_ARGUMENT naming the generic violations."""
    found = violations(message)
    if found:
        raise InvalidArgumentError(found)
