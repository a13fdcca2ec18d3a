"""`broker.v1.InventoryService` through the real server and the generated
stubs: every RPC's happy path and its documented errors with their details."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from broker.v1 import inventory_service_pb2 as pb
from broker.v1 import lease_service_pb2, resource_pb2
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import (
    acquire,
    all_resources,
    calculator,
    constraint,
    create_resource,
    detail,
    expect_error,
    get_lease,
    get_resource,
    pages,
    precondition,
    requirement,
    resource,
)


def update(inventory_stub, message, *paths, etag=""):
    request = pb.UpdateResourceRequest(
        resource=message, update_mask=field_mask_pb2.FieldMask(paths=paths), etag=etag
    )
    return inventory_stub.UpdateResource(request, timeout=RPC_TIMEOUT).resource


def resource_info(error, resource_type: str, name: str) -> None:
    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == (resource_type, name)


# ------------------------------------------------------------------ ListKinds


def test_list_kinds_describes_every_configured_kind_and_its_typed_fields(inventory_stub):
    kinds = {
        kind.name: kind
        for kind in inventory_stub.ListKinds(pb.ListKindsRequest(), timeout=RPC_TIMEOUT).kinds
    }

    assert set(kinds) == {"Calculator", "Phone", "Licence"}
    assert kinds["Calculator"].ownable and kinds["Phone"].ownable
    assert not kinds["Licence"].ownable
    assert "calculator" in kinds["Calculator"].doc.lower()
    calc_fields = {field.name: field for field in kinds["Calculator"].fields}
    assert calc_fields["ip_address"].type == resource_pb2.FIELD_TYPE_IP_ADDRESS
    assert calc_fields["ip_address"].required
    assert calc_fields["port"].type == resource_pb2.FIELD_TYPE_INTEGER
    assert not calc_fields["port"].required
    phone = kinds["Phone"].fields
    assert [(f.name, f.type) for f in phone] == [
        ("os", resource_pb2.FIELD_TYPE_STRING),
        ("version", resource_pb2.FIELD_TYPE_INTEGER),
        ("rooted", resource_pb2.FIELD_TYPE_BOOLEAN),
        ("battery", resource_pb2.FIELD_TYPE_FLOAT),
    ]
    assert (phone[0].required, phone[0].max_length) == (True, 32)
    assert phone[1].default_value.int_value == 0 and phone[1].HasField("default_value")
    assert phone[2].default_value.WhichOneof("kind") == "bool_value"
    assert not phone[3].required and not phone[3].HasField("default_value")
    assert phone[1].doc == "The OS major version."


# ------------------------------------------------------------- CreateResource


def test_create_stores_the_resource_with_defaults_filled_in(inventory_stub):
    created = create_resource(
        inventory_stub, resource("Phone", "pixel-8", {"os": "android"}, comment="bench phone")
    )

    assert created.name == "pixel-8" and created.kind == "Phone"
    assert created.fields["os"].string_value == "android"
    assert created.fields["version"].int_value == 0
    assert created.fields["rooted"].bool_value is False
    assert "battery" not in created.fields
    assert created.is_usable and created.comment == "bench phone"
    assert (created.owner, list(created.lease_ids), created.fencing_token) == ("", [], 0)
    assert created.etag
    assert created.create_time.seconds > 0 and created.update_time == created.create_time
    assert get_resource(inventory_stub, "pixel-8") == created


def test_create_keeps_every_given_common_field_and_normalizes_ip_addresses(inventory_stub):
    created = create_resource(
        inventory_stub,
        calculator(
            "calc-v6",
            "2001:DB8::0:1",
            is_usable=False,
            comment="screen cracked",
            group="bench-2",
            reserved_for="alice",
        ),
    )

    assert created.fields["ip_address"].string_value == "2001:db8::1"
    assert not created.is_usable
    assert (created.comment, created.group, created.reserved_for) == (
        "screen cracked",
        "bench-2",
        "alice",
    )


def test_create_with_a_taken_name_is_already_exists_whatever_the_kind(inventory_stub):
    create_resource(inventory_stub, calculator("shared-name"))

    error = expect_error(
        inventory_stub.CreateResource,
        pb.CreateResourceRequest(resource=resource("Licence", "shared-name", {"product": "x"})),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    resource_info(error, "resource", "shared-name")
    assert get_resource(inventory_stub, "shared-name").kind == "Calculator"


def test_create_of_an_unknown_kind_is_not_found_naming_the_kind(inventory_stub):
    error = expect_error(
        inventory_stub.CreateResource,
        pb.CreateResourceRequest(resource=resource("Toaster", "toaster-1")),
        grpc.StatusCode.NOT_FOUND,
    )

    resource_info(error, "kind", "Toaster")
    assert all_resources(inventory_stub) == []


# ---------------------------------------------------------------- GetResource


def test_get_of_a_missing_resource_is_not_found_with_resource_info(inventory_stub):
    error = expect_error(
        inventory_stub.GetResource, pb.GetResourceRequest(name="nope"), grpc.StatusCode.NOT_FOUND
    )

    resource_info(error, "resource", "nope")


def test_get_shows_the_holder_lease_and_fencing_token_of_a_held_resource(
    inventory_stub, lease_stub, calculators
):
    granted = acquire(lease_stub, requirement("Calculator", name="calc-2"), holder="alice")

    held = get_resource(inventory_stub, "calc-2")

    assert held.owner == "alice"
    assert list(held.lease_ids) == [granted.lease.lease_id]
    assert held.fencing_token == granted.lease.grants[0].fencing_token > 0
    assert get_resource(inventory_stub, "calc-1").owner == ""


# -------------------------------------------------------------- ListResources


def test_list_filters_by_kind_typed_field_and_common_field(inventory_stub):
    create_resource(inventory_stub, calculator("calc-a", "10.0.0.1", group="bench-1"))
    create_resource(inventory_stub, calculator("calc-b", "10.0.0.2", group="bench-2"))
    create_resource(inventory_stub, resource("Phone", "phone-a", {"os": "ios"}, group="bench-1"))
    create_resource(
        inventory_stub, resource("Licence", "lic-a", {"product": "matlab"}, group="bench-1")
    )

    def names(**filters):
        return [r.name for r in all_resources(inventory_stub, **filters)]

    assert names() == ["calc-a", "calc-b", "lic-a", "phone-a"]
    assert names(kind="Calculator") == ["calc-a", "calc-b"]
    assert names(constraints=[constraint("group", "bench-1")]) == ["calc-a", "lic-a", "phone-a"]
    assert names(kind="Calculator", constraints=[constraint("ip_address", "10.0.0.2")]) == [
        "calc-b"
    ]
    assert names(
        kind="Calculator", constraints=[constraint("ip_address", "10.0.0.2", "10.0.0.1")]
    ) == ["calc-a", "calc-b"]
    assert names(kind="Phone", constraints=[constraint("os", "android")]) == []
    listed = all_resources(inventory_stub, kind="Phone")
    assert listed == [get_resource(inventory_stub, "phone-a")]


def test_list_of_an_unknown_kind_is_not_found(inventory_stub):
    error = expect_error(
        inventory_stub.ListResources,
        pb.ListResourcesRequest(kind="Toaster"),
        grpc.StatusCode.NOT_FOUND,
    )

    resource_info(error, "kind", "Toaster")


@pytest.mark.parametrize(
    ("page_size", "kind", "expected_pages"),
    [
        pytest.param(3, "", [3, 3, 3, 1], id="all-kinds-by-3"),
        pytest.param(4, "Calculator", [4, 3], id="one-kind-by-4"),
        pytest.param(0, "", [10], id="default-size"),
        pytest.param(10, "", [10], id="exactly-one-full-page"),
    ],
)
def test_list_pages_through_every_resource_once_in_name_order(
    inventory_stub, page_size, kind, expected_pages
):
    for n in range(7):
        create_resource(inventory_stub, calculator(f"calc-{n:02d}", f"10.0.1.{n}"))
    for n in range(3):
        create_resource(inventory_stub, resource("Licence", f"lic-{n:02d}", {"product": "matlab"}))

    listed = list(
        pages(
            inventory_stub.ListResources,
            pb.ListResourcesRequest(kind=kind, page_size=page_size),
            "resources",
        )
    )

    assert [len(page) for page in listed] == expected_pages
    names = [r.name for page in listed for r in page]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert len(names) == (7 if kind else 10)


def test_list_paging_keeps_constraints_across_pages(inventory_stub):
    for n in range(6):
        create_resource(inventory_stub, calculator(f"calc-{n}", group=f"bench-{n % 2}"))

    listed = list(
        pages(
            inventory_stub.ListResources,
            pb.ListResourcesRequest(constraints=[constraint("group", "bench-1")], page_size=2),
            "resources",
        )
    )

    assert [[r.name for r in page] for page in listed] == [["calc-1", "calc-3"], ["calc-5"]]


# ------------------------------------------------------------- UpdateResource


def test_update_changes_only_the_masked_fields(inventory_stub):
    before = create_resource(inventory_stub, calculator("calc-1", group="bench-1", comment="old"))

    after = update(
        inventory_stub,
        calculator("calc-1", "10.9.9.9", group="ignored", comment="new", is_usable=False),
        "comment",
        "is_usable",
    )

    assert (after.comment, after.is_usable) == ("new", False)
    assert after.group == "bench-1"
    assert after.fields["ip_address"].string_value == "10.0.0.1"
    assert after.etag != before.etag
    assert after.update_time.ToNanoseconds() > before.update_time.ToNanoseconds()
    assert after.create_time == before.create_time
    assert get_resource(inventory_stub, "calc-1") == after


def test_update_of_one_typed_field_by_path_keeps_the_others(inventory_stub):
    create_resource(inventory_stub, resource("Phone", "phone-1", {"os": "android", "version": 13}))

    after = update(
        inventory_stub,
        resource("Phone", "phone-1", {"version": 14, "os": "ignored"}),
        "fields.version",
    )

    assert after.fields["version"].int_value == 14
    assert after.fields["os"].string_value == "android"


def test_update_of_fields_replaces_every_typed_field_given(inventory_stub):
    create_resource(inventory_stub, resource("Phone", "phone-1", {"os": "android", "version": 13}))

    after = update(
        inventory_stub, resource("Phone", "phone-1", {"os": "ios", "rooted": True}), "fields"
    )

    assert after.fields["os"].string_value == "ios"
    assert after.fields["rooted"].bool_value is True
    assert after.fields["version"].int_value == 13


def test_update_with_the_current_etag_succeeds_and_a_stale_one_is_aborted(inventory_stub):
    created = create_resource(inventory_stub, calculator("calc-1"))
    updated = update(
        inventory_stub, calculator("calc-1", comment="v2"), "comment", etag=created.etag
    )

    error = expect_error(
        inventory_stub.UpdateResource,
        pb.UpdateResourceRequest(
            resource=calculator("calc-1", comment="lost update"),
            update_mask=field_mask_pb2.FieldMask(paths=["comment"]),
            etag=created.etag,
        ),
        grpc.StatusCode.ABORTED,
    )

    assert created.etag in error.details()
    assert get_resource(inventory_stub, "calc-1") == updated


def test_update_of_a_missing_resource_is_not_found(inventory_stub):
    error = expect_error(
        inventory_stub.UpdateResource,
        pb.UpdateResourceRequest(
            resource=calculator("ghost", comment="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["comment"]),
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    resource_info(error, "resource", "ghost")


# ------------------------------------------------------------- DeleteResource


def test_delete_removes_the_resource(inventory_stub):
    created = create_resource(inventory_stub, calculator("calc-1"))
    create_resource(inventory_stub, calculator("calc-2"))

    inventory_stub.DeleteResource(
        pb.DeleteResourceRequest(name="calc-1", etag=created.etag), timeout=RPC_TIMEOUT
    )

    expect_error(
        inventory_stub.GetResource, pb.GetResourceRequest(name="calc-1"), grpc.StatusCode.NOT_FOUND
    )
    assert [r.name for r in all_resources(inventory_stub)] == ["calc-2"]


def test_delete_of_a_missing_resource_is_not_found(inventory_stub):
    error = expect_error(
        inventory_stub.DeleteResource,
        pb.DeleteResourceRequest(name="ghost"),
        grpc.StatusCode.NOT_FOUND,
    )

    resource_info(error, "resource", "ghost")


def test_delete_with_a_stale_etag_is_aborted_and_keeps_the_resource(inventory_stub):
    created = create_resource(inventory_stub, calculator("calc-1"))
    updated = update(inventory_stub, calculator("calc-1", comment="changed"), "comment")

    expect_error(
        inventory_stub.DeleteResource,
        pb.DeleteResourceRequest(name="calc-1", etag=created.etag),
        grpc.StatusCode.ABORTED,
    )

    assert get_resource(inventory_stub, "calc-1") == updated


def test_delete_of_a_leased_resource_fails_until_the_lease_ends(
    inventory_stub, lease_stub, calculators
):
    granted = acquire(lease_stub, requirement("Calculator", name="calc-1"))

    error = expect_error(
        inventory_stub.DeleteResource,
        pb.DeleteResourceRequest(name="calc-1"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    violation = precondition(error)
    assert (violation.type, violation.subject) == ("RESOURCE_LEASED", "resources/calc-1")
    assert granted.lease.lease_id in violation.description
    assert get_resource(inventory_stub, "calc-1").owner == "tester"

    lease_stub.ReleaseLease(
        lease_service_pb2.ReleaseLeaseRequest(
            lease_id=granted.lease.lease_id, secret=granted.secret
        ),
        timeout=RPC_TIMEOUT,
    )
    inventory_stub.DeleteResource(pb.DeleteResourceRequest(name="calc-1"), timeout=RPC_TIMEOUT)
    expect_error(
        inventory_stub.GetResource, pb.GetResourceRequest(name="calc-1"), grpc.StatusCode.NOT_FOUND
    )
    # The lease still reads, with the resource as it was granted.
    lease = get_lease(lease_stub, granted.lease.lease_id)
    assert lease.grants[0].resource.name == "calc-1"
