"""Constraints beyond equality, end to end on both backends: comparisons on
number fields, prefix and contains on text, negation (which an unset field
passes), as `request()`'s Django lookups, the CLI's `--where` operators and
the contract's tests; and bad ones refused, naming the field."""

from __future__ import annotations

import pytest

from broker.field_values import to_field_value
from broker.v1 import lease_pb2, resource_pb2
from sdk import FailedPreconditionError, InvalidArgumentError, request
from sdk.base_resource import BaseResource
from sdk.cli import main as cli_main
from sdk.requirements import to_constraints
from tests.kinds import PhoneData


class Phone(BaseResource):
    DATA_CLASS = PhoneData


PHONES = {
    "pixel-6": {"os": "android", "version": 12, "battery": 4614.0},
    "pixel-8": {"os": "android", "version": 14, "battery": 4575.0},
    "iphone-15": {"os": "ios", "version": 17, "battery": 3349.0},
    "old-nexus": {"os": "android", "version": 7},  # battery unset
}


@pytest.fixture
def phones(client):
    for name, fields in PHONES.items():
        client.create_resource("Phone", name, fields, group="QA" if "pixel" in name else "")
    return client


def matching(client, **constraints) -> set[str]:
    """The names of the phones the constraints select, as listed."""
    return {r.name for r in client.list_resources("Phone", where=constraints)}


@pytest.mark.parametrize(
    ("constraints", "names"),
    [
        ({"version__gt": 12}, {"pixel-8", "iphone-15"}),
        ({"version__gte": 12}, {"pixel-6", "pixel-8", "iphone-15"}),
        ({"version__lt": 12}, {"old-nexus"}),
        ({"version__lte": 12, "os": "android"}, {"pixel-6", "old-nexus"}),
        ({"battery__gte": 4000.5}, {"pixel-6", "pixel-8"}),
        ({"name__startswith": "pixel-"}, {"pixel-6", "pixel-8"}),
        ({"name__contains": "-1"}, {"iphone-15"}),
        ({"name__startswith": "Pixel"}, set()),  # letter case counts, on both backends
        ({"os__not": "android"}, {"iphone-15"}),
        ({"name__not_in": ["pixel-6", "pixel-8"]}, {"iphone-15", "old-nexus"}),
        ({"name__not_startswith": "pixel"}, {"iphone-15", "old-nexus"}),
        ({"battery__not_gt": 4000.0}, {"iphone-15", "old-nexus"}),  # unset passes a negation
        ({"group__not": "QA"}, {"iphone-15", "old-nexus"}),
        ({"version__in": [7, 17]}, {"old-nexus", "iphone-15"}),
    ],
)
def test_listing_selects_by_each_test(phones, constraints, names):
    assert matching(phones, **constraints) == names


def test_a_lease_is_granted_by_the_same_tests(phones):
    with phones.lease(Phone, version__gte=14, os__not="ios", wait=0) as phone:
        assert phone.name == "pixel-8"
    spares = request(Phone, count=2, name__startswith="pixel", battery__lt=5000.0)
    with phones.lease_many({"spares": spares}, wait=0) as held:
        assert {p.name for p in held["spares"]} == {"pixel-6", "pixel-8"}


def test_a_waiting_request_keeps_its_tests(phones):
    """A request that waits is stored and served by its tests: the queue
    gives it the phone that passes them, not the first one freed."""
    held = phones.lease(Phone, name="pixel-8", wait=0)
    with held:
        waiting = phones.watch_acquire(
            [request(Phone, version__gt=13, os="android").to_requirement("new")],
            max_wait=30,
        )
        status = next(waiting)
        assert [h.resource for h in status.status.blocked.holders] == ["pixel-8"]
        (queued,) = list(phones.list_waiters())
        (tested,) = queued.requirements[0].constraints[:1]
        assert (tested.field, tested.WhichOneof("test")) == ("version", "greater_than")
    granted = next(event for event in waiting if hasattr(event, "lease"))
    assert [g.resource.name for g in granted.lease.grants] == ["pixel-8"]
    phones.release(granted.lease.lease_id, granted.secret)


@pytest.mark.parametrize(
    ("constraint", "path", "message"),
    [
        (
            lease_pb2.Constraint(field="os", greater_than=to_field_value("a")),
            "constraints[0].greater_than",
            "os is a string field: greater_than compares numbers",
        ),
        (
            lease_pb2.Constraint(field="version", prefix="1"),
            "constraints[0].prefix",
            "version is an integer field: prefix looks into text",
        ),
        (
            lease_pb2.Constraint(field="name", contains=""),
            "constraints[0].contains",
            "needs the text to look for",
        ),
        (
            lease_pb2.Constraint(field="version", at_least=to_field_value(1.5)),
            "constraints[0].at_least",
            "version must be an integer",
        ),
        (
            lease_pb2.Constraint(field="battery", less_than=resource_pb2.FieldValue()),
            "constraints[0].less_than",
            "a value is required",
        ),
    ],
)
def test_a_test_that_does_not_fit_its_field_is_refused_naming_it(phones, constraint, path, message):
    requirement = lease_pb2.Requirement(kind="Phone", constraints=[constraint])
    with pytest.raises(InvalidArgumentError, match=message) as refused:
        phones.acquire([requirement])
    assert [field for field, _ in refused.value.field_violations] == [f"requirements[0].{path}"]
    assert list(phones.list_leases()) == []


def test_a_test_of_an_unknown_field_names_the_fields(phones):
    with pytest.raises(FailedPreconditionError, match="has no field 'colour'"):
        phones.acquire([request(Phone, colour__startswith="r").to_requirement("")])


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"version__between": 3}, ValueError, "no lookup 'between'"),
        ({"version__gt": [1, 2]}, TypeError, "compares one value"),
        ({"name__in": "pixel"}, TypeError, "takes a list"),
        ({"name__startswith": 3}, TypeError, "looks for text"),
    ],
)
def test_the_sdk_refuses_a_bad_lookup_naming_its_keyword(keywords, error, message):
    with pytest.raises(error, match=message):
        to_constraints(keywords)


def test_lookups_become_the_contracts_tests():
    (gte, not_in, prefix) = to_constraints(
        {"version__gte": 12, "name__not_in": ["a"], "name__startswith": "pix"}
    )
    assert (gte.WhichOneof("test"), gte.at_least.int_value, gte.negate) == ("at_least", 12, False)
    assert (not_in.WhichOneof("test"), not_in.negate) == ("any_of", True)
    assert (prefix.WhichOneof("test"), prefix.prefix) == ("prefix", "pix")


@pytest.mark.parametrize(
    ("where", "names"),
    [
        (["version>=14"], ["iphone-15", "pixel-8"]),
        (["version>12", "os!=ios"], ["pixel-8"]),
        (["version<12"], ["old-nexus"]),
        (["version<=7"], ["old-nexus"]),
        (["name^=pixel"], ["pixel-6", "pixel-8"]),
        (["name*=15"], ["iphone-15"]),
    ],
)
def test_the_cli_where_takes_the_tests(broker, phones, capsys, where, names):
    arguments = ["--target", broker.address, "resources", "list", "--kind", "Phone"]
    for item in where:
        arguments += ["--where", item]
    assert cli_main(arguments) == 0, capsys.readouterr().err
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(listed) == names


def test_the_cli_names_a_bad_where(broker, phones, capsys):
    arguments = ["--target", broker.address, "resources", "list", "--kind", "Phone"]
    assert cli_main([*arguments, "--where", "version>=x"]) == 2
    assert "version: 'x' is not a valid integer" in capsys.readouterr().err
    assert cli_main([*arguments, "--where", "colour^=r"]) == 2
    assert "colour: no such field" in capsys.readouterr().err
    assert cli_main([*arguments, "--where", "version"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err
