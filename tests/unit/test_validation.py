"""Generic request checks read off the contract: REQUIRED fields, size caps,
enum numbers, with every violation named by its path."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from broker.api import validation
from broker.api.field_values import to_field_value
from broker.domain.errors import InvalidArgumentError
from broker.v1 import inventory_service_pb2 as inventory
from broker.v1 import lease_pb2, resource_pb2
from broker.v1 import lease_service_pb2 as lease_service

LONG = "x" * (validation.MAX_STRING + 1)


def paths(message) -> list[str]:
    return [violation.field for violation in validation.violations(message)]


def phone_requirement(**changes) -> lease_pb2.Requirement:
    return lease_pb2.Requirement(
        **{
            "kind": "Phone",
            "constraints": [lease_pb2.Constraint(field="os", equals=to_field_value("android"))],
            **changes,
        }
    )


@pytest.mark.parametrize(
    "message",
    [
        inventory.ListKindsRequest(),
        inventory.GetResourceRequest(name="c1"),
        inventory.ListResourcesRequest(),
        inventory.CreateResourceRequest(
            resource=resource_pb2.Resource(
                name="c1", kind="Calculator", fields={"ip_address": to_field_value("::1")}
            )
        ),
        lease_service.AcquireLeaseRequest(requirements=[phone_requirement()]),
        lease_service.ListLeasesRequest(state=lease_pb2.LEASE_STATE_ACTIVE),
        lease_service.RevokeLeaseRequest(lease_id="L1", reason="maintenance"),
        lease_service.RenewLeaseRequest(lease_id="L1"),
    ],
    ids=lambda message: type(message).__name__,
)
def test_valid_requests_have_no_violations(message):
    assert validation.violations(message) == []
    validation.check(message)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (inventory.GetResourceRequest(), ["name"]),
        (inventory.DeleteResourceRequest(etag="v1"), ["name"]),
        (inventory.CreateResourceRequest(), ["resource"]),
        (
            inventory.CreateResourceRequest(resource=resource_pb2.Resource()),
            ["resource.name"],
        ),
        (lease_service.AcquireLeaseRequest(), ["requirements"]),
        (
            lease_service.AcquireLeaseRequest(
                requirements=[phone_requirement(), lease_pb2.Requirement(count=2)]
            ),
            ["requirements[1].kind"],
        ),
        (
            lease_service.AcquireLeaseRequest(
                requirements=[phone_requirement(constraints=[lease_pb2.Constraint()])]
            ),
            ["requirements[0].constraints[0].field"],
        ),
        (
            lease_service.AcquireLeaseRequest(
                requirements=[
                    phone_requirement(
                        constraints=[
                            lease_pb2.Constraint(field="os", any_of=lease_pb2.FieldValueList())
                        ]
                    )
                ]
            ),
            ["requirements[0].constraints[0].any_of.values"],
        ),
        (lease_service.RenewLeaseRequest(secret="s"), ["lease_id"]),
        (lease_service.RevokeLeaseRequest(), ["lease_id", "reason"]),
        (inventory.UpdateResourceRequest(), ["resource", "update_mask"]),
    ],
)
def test_required_fields_missing_are_named(message, expected):
    assert paths(message) == expected
    assert all(v.description == "is required" for v in validation.violations(message))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (inventory.GetResourceRequest(name=LONG), ["name"]),
        (
            inventory.CreateResourceRequest(
                resource=resource_pb2.Resource(name="c1", kind="Calculator", comment=LONG)
            ),
            ["resource.comment"],
        ),
        (
            inventory.CreateResourceRequest(
                resource=resource_pb2.Resource(
                    name="c1", kind="Calculator", fields={"note": to_field_value(LONG)}
                )
            ),
            ["resource.fields.note.string_value"],
        ),
        (
            lease_service.AcquireLeaseRequest(requirements=[phone_requirement(label=LONG)]),
            ["requirements[0].label"],
        ),
        (
            lease_service.AcquireLeaseRequest(
                requirements=[phone_requirement()] * (validation.MAX_REPEATED + 1)
            ),
            ["requirements"],
        ),
    ],
)
def test_oversize_values_are_named(message, expected):
    assert paths(message) == expected


def test_a_long_map_key_is_refused():
    message = inventory.CreateResourceRequest(
        resource=resource_pb2.Resource(
            name="c1", kind="Calculator", fields={LONG: to_field_value(1)}
        )
    )
    assert paths(message) == ["resource.fields"]


def test_unknown_enum_numbers_are_refused():
    assert paths(lease_service.ListLeasesRequest(state=99)) == ["state"]
    assert "99" in validation.violations(lease_service.ListLeasesRequest(state=99))[0].description


def test_output_only_fields_are_ignored():
    resource = resource_pb2.Resource(
        name="c1",
        kind="Calculator",
        owner=LONG,
        etag=LONG,
        lease_ids=[LONG] * 3,
        fencing_token=7,
    )
    assert paths(inventory.CreateResourceRequest(resource=resource)) == []


def test_update_need_not_repeat_the_kind():
    """An update names its resource and the fields of its mask, as the SDK's
    `update_resource` sends it; the kind is immutable and not part of it."""
    request = inventory.UpdateResourceRequest(
        resource=resource_pb2.Resource(name="p1", comment="flaky"),
        update_mask=field_mask_pb2.FieldMask(paths=["comment"]),
    )
    assert paths(request) == []


def test_check_raises_with_every_violation():
    request = lease_service.AcquireLeaseRequest(
        requirements=[lease_pb2.Requirement(label=LONG), lease_pb2.Requirement(kind="Phone")],
        holder=LONG,
    )
    with pytest.raises(InvalidArgumentError) as error:
        validation.check(request)
    assert [v.field for v in error.value.violations] == [
        "requirements[0].kind",
        "requirements[0].label",
        "holder",
    ]
    assert "requirements[0].kind: is required" in error.value.message
