"""Resource forms built from a kind's declaration (`ListKinds`): one typed
input per field, and the submitted text turned back into the contract's
values. The broker validates what it is sent; its `BadRequest` field
violations come back here as errors beside the inputs they name."""

from __future__ import annotations

import dataclasses
import datetime
import math

from google.protobuf import field_mask_pb2

from broker.v1 import resource_pb2
from broker.web.console.display import value_text

FIELD_PREFIX = "field."
# The resource's own inputs besides its typed fields, by their contract path.
COMMON = ("name", "comment", "group")


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a resource form."""

    name: str
    label: str
    input_type: str
    required: bool
    doc: str = ""
    max_length: int = 0
    choices: tuple[str, ...] = ()
    step: str = ""
    placeholder: str = ""


def inputs_of(kind: resource_pb2.Kind) -> list[Input]:
    """The typed inputs of a kind's fields, in declaration order."""
    found = []
    for spec in kind.fields:
        choices = tuple(value_text(choice) for choice in spec.choices)
        if spec.type == resource_pb2.FIELD_TYPE_BOOLEAN:
            choices = ("yes", "no")
        input_type = {
            resource_pb2.FIELD_TYPE_INTEGER: "number",
            resource_pb2.FIELD_TYPE_FLOAT: "number",
            resource_pb2.FIELD_TYPE_DATE_TIME: "datetime-local",
        }.get(spec.type, "text")
        placeholder = {
            resource_pb2.FIELD_TYPE_IP_ADDRESS: "e.g. 192.0.2.10",
            resource_pb2.FIELD_TYPE_REFERENCE: f"the name of a {spec.kind}",
        }.get(spec.type, value_text(spec.default_value) if spec.HasField("default_value") else "")
        found.append(
            Input(
                name=FIELD_PREFIX + spec.name,
                label=spec.name,
                input_type="select" if choices else input_type,
                required=spec.required,
                doc=spec.doc,
                max_length=spec.max_length,
                choices=choices,
                step={
                    resource_pb2.FIELD_TYPE_INTEGER: "1",
                    resource_pb2.FIELD_TYPE_FLOAT: "any",
                }.get(spec.type, ""),
                placeholder=placeholder,
            )
        )
    return found


def form_values(resource: resource_pb2.Resource, kind: resource_pb2.Kind) -> dict[str, str]:
    """A resource's values as its form's inputs show them."""
    values = {"name": resource.name, "comment": resource.comment, "group": resource.group}
    types = {spec.name: spec.type for spec in kind.fields}
    for name, value in resource.fields.items():
        if types.get(name) == resource_pb2.FIELD_TYPE_DATE_TIME:
            moment = datetime.datetime.fromtimestamp(value.time_value.seconds, datetime.UTC)
            values[FIELD_PREFIX + name] = moment.strftime("%Y-%m-%dT%H:%M")
        else:
            values[FIELD_PREFIX + name] = value_text(value)
    return values


class FormErrors(Exception):
    """Submitted text that is not a value of its field, by input name."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def parse_moment(text: str) -> datetime.datetime:
    """A date and time as a `datetime-local` input sends it, UTC unless it
    names a zone; ValueError saying what it should look like."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def parse_value(spec: resource_pb2.FieldSpec, text: str) -> resource_pb2.FieldValue:
    """The value typed into a field's input, as the contract's FieldValue;
    ValueError naming what is wrong when it is not one."""
    kind = spec.type
    if kind == resource_pb2.FIELD_TYPE_INTEGER:
        try:
            return resource_pb2.FieldValue(int_value=int(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if kind == resource_pb2.FIELD_TYPE_FLOAT:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
        return resource_pb2.FieldValue(float_value=number)
    if kind == resource_pb2.FIELD_TYPE_BOOLEAN:
        lowered = text.lower()
        if lowered not in ("yes", "no", "true", "false"):
            raise ValueError(f"{text!r} is not yes or no")
        return resource_pb2.FieldValue(bool_value=lowered in ("yes", "true"))
    if kind == resource_pb2.FIELD_TYPE_DATE_TIME:
        value = resource_pb2.FieldValue()
        value.time_value.FromDatetime(parse_moment(text))
        return value
    return resource_pb2.FieldValue(string_value=text)


def resource_from_form(
    kind: resource_pb2.Kind, form: dict[str, str], *, name: str
) -> tuple[resource_pb2.Resource, field_mask_pb2.FieldMask]:
    """The resource the form describes, and the mask of every input it has
    (for an edit: an emptied input clears its field)."""
    resource = resource_pb2.Resource(
        name=name,
        kind=kind.name,
        comment=form.get("comment", "").strip(),
        group=form.get("group", "").strip(),
    )
    paths = ["comment", "group"]
    errors: dict[str, str] = {}
    for spec in kind.fields:
        key = FIELD_PREFIX + spec.name
        text = form.get(key, "").strip()
        paths.append(f"fields.{spec.name}")
        if not text:
            continue
        try:
            resource.fields[spec.name].CopyFrom(parse_value(spec, text))
        except ValueError as error:
            errors[key] = str(error)
    if errors:
        raise FormErrors(errors)
    return resource, field_mask_pb2.FieldMask(paths=paths)


def input_of_violation(path: str) -> str:
    """The input a field violation's path names (`resource.fields.ip` ->
    `field.ip`), or "" when no input holds it."""
    path = path.removeprefix("resource.")
    if path.startswith("fields."):
        return FIELD_PREFIX + path.removeprefix("fields.").split(".")[0].split("[")[0]
    if path in COMMON:
        return path
    return ""
