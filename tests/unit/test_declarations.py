"""What tests declare and how `--resource` overrides it, without a broker:
the Rotest spellings of a declaration, inheritance, and overrides typed by
the kind's fields as `ListKinds` describes them."""

from __future__ import annotations

import pytest

from broker.v1 import resource_pb2
from resources.calculator.resource import Calculator
from sdk import request
from sdk.declarations import DeclarationError, class_requests, marker_requests
from sdk.overrides import OverrideError, Overrides, parse_override, parse_overrides


def test_a_resources_list_and_class_attributes_both_declare():
    class Base:
        resources = [request("calc", Calculator, name="calc")]

    class Derived(Base):
        spare = Calculator.request(group="QA")

    requests = class_requests(Derived)
    assert list(requests) == ["calc", "spare"]
    assert requests["calc"] == request("calc", Calculator, name="calc")
    assert requests["spare"].constraints == {"group": "QA"}
    assert requests["spare"].label == "spare"


def test_a_subclass_redeclaring_a_name_replaces_its_bases_request():
    class Base:
        calc = Calculator.request(name="calc")

    class Derived(Base):
        calc = Calculator.request(name="calc2")

    assert class_requests(Derived)["calc"].constraints == {"name": "calc2"}


def test_markers_take_named_requests_and_keywords():
    requests = marker_requests(
        [request("calc", Calculator)], {"other": Calculator.request(name="x")}
    )
    assert [(label, r.label) for label, r in requests.items()] == [
        ("calc", "calc"),
        ("other", "other"),
    ]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ([Calculator.request()], {}, 'needs a name.*request\\("calc", Calculator'),
        ([request("c", Calculator), request("c", Calculator)], {}, "'c' is declared twice"),
        ([], {"calc": "calc"}, "expected a request"),
        (["calc"], {}, "expected request"),
    ],
)
def test_a_bad_declaration_says_how_to_write_it(args, kwargs, message):
    with pytest.raises(DeclarationError, match=message):
        marker_requests(args, kwargs)


def test_a_request_is_named_by_an_identifier_and_counts_at_least_one():
    with pytest.raises(ValueError, match="identifier"):
        request("my calc", Calculator)
    with pytest.raises(ValueError, match="at least 1"):
        request(Calculator, count=0)
    with pytest.raises(TypeError, match="BaseResource subclass"):
        request("calc", "Calculator")
    with pytest.raises(TypeError, match="resource class"):
        request("calc", Calculator, "extra")


@pytest.mark.parametrize(
    ("given", "label", "field", "text"),
    [
        ("calc=name=calc2", "calc", "name", "calc2"),
        ("calc.group=QA", "calc", "group", "QA"),
        ("calc=comment=a=b", "calc", "comment", "a=b"),
        ("calc.comment=a=b", "calc", "comment", "a=b"),
        ("calc=name=", "calc", "name", ""),
    ],
)
def test_both_override_forms_parse(given, label, field, text):
    override = parse_override(given)
    assert (override.label, override.field, override.text) == (label, field, text)


@pytest.mark.parametrize("given", ["calc", "calc=name", "=name=x", "calc.=x", "my-calc=name=x"])
def test_a_malformed_override_is_refused_quoting_it(given):
    with pytest.raises(OverrideError, match="--resource"):
        parse_override(given)


def calculator_kind() -> list[resource_pb2.Kind]:
    return [
        resource_pb2.Kind(
            name="Calculator",
            fields=[
                resource_pb2.FieldSpec(name="ip_address", type=resource_pb2.FIELD_TYPE_IP_ADDRESS),
                resource_pb2.FieldSpec(name="port", type=resource_pb2.FIELD_TYPE_INTEGER),
            ],
        )
    ]


def test_overrides_replace_one_constraint_typed_by_the_kind():
    asked = []

    def list_kinds():
        asked.append(1)
        return calculator_kind()

    overrides = Overrides(parse_overrides(["calc=port=1357", "calc.name=calc2"]), list_kinds)
    declared = {
        "calc": request("calc", Calculator, name="calc", group="QA"),
        "x": request(Calculator),
    }
    applied = overrides.apply(declared)
    assert applied["calc"].constraints == {"name": "calc2", "group": "QA", "port": 1357}
    assert applied["x"] == declared["x"]
    overrides.apply(declared)
    assert asked == [1]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("calc=port=http", "port: 'http' is not a valid integer"),
        ("calc=colour=red", "colour: no such field \\(fields: name, group, comment, ip_address"),
    ],
)
def test_an_override_that_does_not_fit_names_the_field(given, message):
    overrides = Overrides(parse_overrides([given]), calculator_kind)
    with pytest.raises(OverrideError, match=message):
        overrides.apply({"calc": request("calc", Calculator)})


def test_an_override_with_a_lookup_replaces_every_constraint_on_its_field():
    overrides = Overrides(
        parse_overrides(["calc=port__gte=1024", "calc=name__in=calc1,calc2"]), calculator_kind
    )
    declared = request("calc", Calculator, name="calc", port=1357, group="QA")
    applied = overrides.apply({"calc": declared})["calc"]
    assert applied.constraints == {
        "group": "QA",
        "port__gte": 1024,
        "name__in": ["calc1", "calc2"],
    }


def test_an_override_with_a_text_lookup_takes_the_text_as_it_is():
    overrides = Overrides(parse_overrides(["calc.name__startswith=Calc-"]), calculator_kind)
    applied = overrides.apply({"calc": request("calc", Calculator, name__contains="x")})["calc"]
    assert applied.constraints == {"name__startswith": "Calc-"}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("calc=port__gte=soon", "port: 'soon' is not a valid integer"),
        ("calc=name__near=x", "no lookup 'near'"),
        ("calc=colour__startswith=r", "colour: no such field"),
    ],
)
def test_a_bad_override_lookup_is_named(given, message):
    with pytest.raises(OverrideError, match=message):
        overrides = Overrides(parse_overrides([given]), calculator_kind)
        overrides.apply({"calc": request("calc", Calculator)})
