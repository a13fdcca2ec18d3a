"""Bad input, RPC by RPC: each malformed request gets INVALID_ARGUMENT with a
`google.rpc.BadRequest` naming the field, changes nothing in the database,
and leaves the server serving."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from broker.models.database import close_database, open_database
from broker.v1 import inventory_service_pb2 as inv
from broker.v1 import lease_pb2, resource_pb2
from broker.v1 import lease_service_pb2 as lease
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import (
    acquire,
    acquire_request,
    calculator,
    call_error,
    constraint,
    create_resource,
    requirement,
    resource,
    violation_fields,
)

LONG = "x" * 4097
NAME_129 = "n" * 129
A_LEASE_ID = "00000000-0000-0000-0000-000000000000"
# A well-formed token of the other listing, and tokens this broker never made.
LEASES_TOKEN = "eyJ0aW1lIjoxLjAsImlkIjoiYSJ9"  # {"time":1.0,"id":"a"}
RESOURCES_TOKEN = "eyJhZnRlciI6ImEifQ"  # {"after":"a"}
WRONG_TYPES_TOKEN = "eyJ0aW1lIjoieCIsImlkIjoxfQ"  # {"time":"x","id":1}


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=paths)


def update(
    message: resource_pb2.Resource, *paths: str, etag: str = ""
) -> inv.UpdateResourceRequest:
    return inv.UpdateResourceRequest(resource=message, update_mask=mask(*paths), etag=etag)


def with_ttl(seconds: int, nanos: int = 0) -> lease.AcquireLeaseRequest:
    request = acquire_request(requirement("Calculator"))
    request.ttl.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    return request


def create(message: resource_pb2.Resource) -> inv.CreateResourceRequest:
    return inv.CreateResourceRequest(resource=message)


def create_phone(**fields) -> inv.CreateResourceRequest:
    return create(resource("Phone", "phone-9", {"os": "android", **fields}))


def acquire_with(*constraints: lease_pb2.Constraint) -> lease.AcquireLeaseRequest:
    return acquire_request(lease_pb2.Requirement(kind="Calculator", constraints=constraints))


STRING_VALUE = resource_pb2.FieldValue(string_value="x")
# An any_of whose second value has the wrong type for an IP address.
BAD_IP_LIST = constraint("ip_address", "10.0.0.1", 7)


def bad(case_id: str, request, field: str):
    """One row of the table: the RPC is the one whose request type this is."""
    return pytest.param(request, field, id=case_id)


CASES = [
    # ---------------------------------------------------------- CreateResource
    bad("create-no-resource", inv.CreateResourceRequest(), "resource"),
    bad("create-no-name", create(calculator("")), "resource.name"),
    bad(
        "create-no-kind",
        create(resource("", "calc-9", {"ip_address": "10.0.0.9"})),
        "resource.kind",
    ),
    bad("create-name-129", create(calculator(NAME_129)), "resource.name"),
    bad("create-name-4097", create(calculator(LONG)), "resource.name"),
    bad("create-name-bad-chars", create(calculator("bad name!")), "resource.name"),
    bad("create-comment-4097", create(calculator("calc-9", comment=LONG)), "resource.comment"),
    bad("create-group-129", create(calculator("calc-9", group="g" * 129)), "resource.group"),
    bad(
        "create-reserved-for-129",
        create(calculator("calc-9", reserved_for="r" * 129)),
        "resource.reserved_for",
    ),
    bad(
        "create-required-field-missing",
        create(resource("Calculator", "calc-9")),
        "resource.fields.ip_address",
    ),
    bad(
        "create-int-for-ip-address",
        create(resource("Calculator", "calc-9", {"ip_address": 10})),
        "resource.fields.ip_address",
    ),
    bad(
        "create-malformed-ip-address",
        create(calculator("calc-9", "10.0.0.256")),
        "resource.fields.ip_address",
    ),
    bad(
        "create-string-for-integer",
        create(resource("Calculator", "calc-9", {"ip_address": "10.0.0.9", "port": "1357"})),
        "resource.fields.port",
    ),
    bad(
        "create-unknown-field",
        create(resource("Calculator", "calc-9", {"ip_address": "10.0.0.9", "colour": "red"})),
        "resource.fields.colour",
    ),
    bad("create-bool-for-integer", create_phone(version=True), "resource.fields.version"),
    bad("create-int-for-boolean", create_phone(rooted=1), "resource.fields.rooted"),
    bad("create-string-for-float", create_phone(battery="big"), "resource.fields.battery"),
    bad("create-nan-float", create_phone(battery=float("nan")), "resource.fields.battery"),
    bad("create-string-over-max-length", create_phone(os="o" * 33), "resource.fields.os"),
    # ------------------------------------------------------------- GetResource
    bad("get-no-name", inv.GetResourceRequest(), "name"),
    bad("get-name-129", inv.GetResourceRequest(name=NAME_129), "name"),
    bad("get-name-4097", inv.GetResourceRequest(name=LONG), "name"),
    bad("get-name-bad-chars", inv.GetResourceRequest(name="a/b"), "name"),
    # ----------------------------------------------------------- ListResources
    bad("list-resources-negative-page-size", inv.ListResourcesRequest(page_size=-1), "page_size"),
    bad("list-resources-page-size-1001", inv.ListResourcesRequest(page_size=1001), "page_size"),
    bad(
        "list-resources-garbage-token",
        inv.ListResourcesRequest(page_token="garbage!"),
        "page_token",
    ),
    bad(
        "list-resources-token-of-leases",
        inv.ListResourcesRequest(page_token=LEASES_TOKEN),
        "page_token",
    ),
    bad("list-resources-kind-4097", inv.ListResourcesRequest(kind=LONG), "kind"),
    bad(
        "list-resources-constraint-without-field",
        inv.ListResourcesRequest(constraints=[lease_pb2.Constraint(equals=STRING_VALUE)]),
        "constraints[0].field",
    ),
    bad(
        "list-resources-constraint-without-value",
        inv.ListResourcesRequest(constraints=[lease_pb2.Constraint(field="group")]),
        "constraints[0]",
    ),
    bad(
        "list-resources-kind-field-without-kind",
        inv.ListResourcesRequest(constraints=[constraint("ip_address", "10.0.0.1")]),
        "constraints[0]",
    ),
    bad(
        "list-resources-string-for-integer",
        inv.ListResourcesRequest(kind="Calculator", constraints=[constraint("port", "1357")]),
        "constraints[0].equals",
    ),
    bad(
        "list-resources-int-in-ip-address-list",
        inv.ListResourcesRequest(kind="Calculator", constraints=[BAD_IP_LIST]),
        "constraints[0].any_of.values[1]",
    ),
    bad(
        "list-resources-257-values",
        inv.ListResourcesRequest(constraints=[constraint("group", *map(str, range(257)))]),
        "constraints[0]",
    ),
    # ---------------------------------------------------------- UpdateResource
    bad("update-no-resource", inv.UpdateResourceRequest(update_mask=mask("comment")), "resource"),
    bad(
        "update-no-mask",
        inv.UpdateResourceRequest(resource=calculator("calc-1", comment="x")),
        "update_mask",
    ),
    bad("update-no-name", update(resource_pb2.Resource(comment="x"), "comment"), "resource.name"),
    bad("update-output-only-path", update(calculator("calc-1"), "owner"), "update_mask"),
    bad("update-immutable-path", update(calculator("calc-1"), "name"), "update_mask"),
    bad("update-subpath-of-scalar", update(calculator("calc-1"), "comment.text"), "update_mask"),
    bad("update-unknown-kind-field", update(calculator("calc-1"), "fields.colour"), "update_mask"),
    bad(
        "update-comment-4097",
        update(calculator("calc-1", comment=LONG), "comment"),
        "resource.comment",
    ),
    bad(
        "update-group-129", update(calculator("calc-1", group="g" * 129), "group"), "resource.group"
    ),
    bad(
        "update-string-for-integer",
        update(resource("Calculator", "calc-1", {"port": "1357"}), "fields.port"),
        "resource.fields.port",
    ),
    bad(
        "update-int-for-ip-address",
        update(resource("Calculator", "calc-1", {"ip_address": 10}), "fields"),
        "resource.fields.ip_address",
    ),
    bad(
        "update-clears-required-field",
        update(resource("Calculator", "calc-1"), "fields.ip_address"),
        "resource.fields.ip_address",
    ),
    bad("update-etag-4097", update(calculator("calc-1"), "comment", etag=LONG), "etag"),
    # ---------------------------------------------------------- DeleteResource
    bad("delete-no-name", inv.DeleteResourceRequest(), "name"),
    bad("delete-name-129", inv.DeleteResourceRequest(name=NAME_129), "name"),
    bad("delete-etag-4097", inv.DeleteResourceRequest(name="calc-1", etag=LONG), "etag"),
    # ------------------------------------------------------------ AcquireLease
    bad("acquire-no-requirements", lease.AcquireLeaseRequest(), "requirements"),
    bad(
        "acquire-no-kind",
        acquire_request(lease_pb2.Requirement(count=1)),
        "requirements[0].kind",
    ),
    bad(
        "acquire-negative-count",
        acquire_request(requirement("Calculator", count=-1)),
        "requirements[0].count",
    ),
    bad(
        "acquire-count-65",
        acquire_request(requirement("Calculator", count=65)),
        "requirements[0].count",
    ),
    bad(
        "acquire-80-resources-in-all",
        acquire_request(requirement("Calculator", count=40), requirement("Calculator", count=40)),
        "requirements",
    ),
    bad(
        "acquire-17-requirements",
        acquire_request(*[requirement("Calculator")] * 17),
        "requirements",
    ),
    bad(
        "acquire-label-65",
        acquire_request(requirement("Calculator", label="l" * 65)),
        "requirements[0].label",
    ),
    bad(
        "acquire-holder-129", acquire_request(requirement("Calculator"), holder=NAME_129), "holder"
    ),
    bad("acquire-holder-4097", acquire_request(requirement("Calculator"), holder=LONG), "holder"),
    bad("acquire-ttl-zero", with_ttl(0), "ttl"),
    bad("acquire-ttl-half-second", with_ttl(0, 500_000_000), "ttl"),
    bad("acquire-ttl-negative", with_ttl(-5), "ttl"),
    bad("acquire-ttl-over-max", with_ttl(601), "ttl"),
    bad(
        "acquire-constraint-without-field",
        acquire_with(lease_pb2.Constraint(equals=STRING_VALUE)),
        "requirements[0].constraints[0].field",
    ),
    bad(
        "acquire-constraint-without-value",
        acquire_with(lease_pb2.Constraint(field="ip_address")),
        "requirements[0].constraints[0]",
    ),
    bad(
        "acquire-string-for-integer",
        acquire_with(constraint("port", "1357")),
        "requirements[0].constraints[0].equals",
    ),
    bad(
        "acquire-int-for-ip-address",
        acquire_with(constraint("ip_address", 10)),
        "requirements[0].constraints[0].equals",
    ),
    bad(
        "acquire-malformed-ip-address",
        acquire_with(constraint("ip_address", "not-an-ip")),
        "requirements[0].constraints[0].equals",
    ),
    bad(
        "acquire-int-in-ip-address-list",
        acquire_with(BAD_IP_LIST),
        "requirements[0].constraints[0].any_of.values[1]",
    ),
    # -------------------------------------------------- RenewLease, ReleaseLease
    bad("renew-no-lease-id", lease.RenewLeaseRequest(secret="s"), "lease_id"),
    bad("renew-lease-id-4097", lease.RenewLeaseRequest(lease_id=LONG, secret="s"), "lease_id"),
    bad("renew-secret-4097", lease.RenewLeaseRequest(lease_id=A_LEASE_ID, secret=LONG), "secret"),
    bad("release-no-lease-id", lease.ReleaseLeaseRequest(secret="s"), "lease_id"),
    bad("release-lease-id-4097", lease.ReleaseLeaseRequest(lease_id=LONG, secret="s"), "lease_id"),
    bad(
        "release-secret-4097",
        lease.ReleaseLeaseRequest(lease_id=A_LEASE_ID, secret=LONG),
        "secret",
    ),
    # ----------------------------------------------------------------- GetLease
    bad("get-lease-no-id", lease.GetLeaseRequest(), "lease_id"),
    bad("get-lease-id-4097", lease.GetLeaseRequest(lease_id=LONG), "lease_id"),
    # --------------------------------------------------------------- ListLeases
    bad("list-leases-unknown-state", lease.ListLeasesRequest(state=99), "state"),
    bad("list-leases-negative-page-size", lease.ListLeasesRequest(page_size=-1), "page_size"),
    bad("list-leases-page-size-1001", lease.ListLeasesRequest(page_size=1001), "page_size"),
    bad("list-leases-garbage-token", lease.ListLeasesRequest(page_token="garbage!"), "page_token"),
    bad(
        "list-leases-token-of-resources",
        lease.ListLeasesRequest(page_token=RESOURCES_TOKEN),
        "page_token",
    ),
    bad(
        "list-leases-token-wrong-types",
        lease.ListLeasesRequest(page_token=WRONG_TYPES_TOKEN),
        "page_token",
    ),
    bad("list-leases-holder-4097", lease.ListLeasesRequest(holder=LONG), "holder"),
    bad("list-leases-resource-4097", lease.ListLeasesRequest(resource=LONG), "resource"),
    # -------------------------------------------------------------- RevokeLease
    bad("revoke-no-lease-id", lease.RevokeLeaseRequest(reason="why"), "lease_id"),
    bad("revoke-no-reason", lease.RevokeLeaseRequest(lease_id=A_LEASE_ID), "reason"),
    bad(
        "revoke-blank-reason", lease.RevokeLeaseRequest(lease_id=A_LEASE_ID, reason="   "), "reason"
    ),
    bad(
        "revoke-reason-1025",
        lease.RevokeLeaseRequest(lease_id=A_LEASE_ID, reason="r" * 1025),
        "reason",
    ),
]


def database_snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, read through a connection of its own."""
    database = open_database(url)
    try:
        schema = getattr(database, "schema", None)
        return {
            table: sorted(database.execute_sql(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in database.get_tables(schema=schema)
        }
    finally:
        close_database(database)


@pytest.fixture
def seeded(inventory_stub, lease_stub, config):
    """An inventory of every kind with an active and a released lease, so that
    a stray write would show in the snapshot."""
    for message in (
        calculator("calc-1"),
        calculator("calc-2", "10.0.0.2"),
        resource("Phone", "phone-1", {"os": "android", "version": 14}),
        resource("Licence", "matlab-1", {"product": "matlab"}),
    ):
        create_resource(inventory_stub, message)
    acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="alice")
    done = acquire(lease_stub, requirement("Licence"), holder="bob")
    lease_stub.ReleaseLease(
        lease.ReleaseLeaseRequest(lease_id=done.lease.lease_id, secret=done.secret),
        timeout=RPC_TIMEOUT,
    )
    tables = database_snapshot(config.database.url)
    assert (len(tables["resource"]), len(tables["lease"]), len(tables["event"])) == (4, 2, 7)
    return config.database.url


@pytest.mark.parametrize(("request_message", "field"), CASES)
def test_bad_input_is_invalid_argument_naming_the_field_and_changes_nothing(
    inventory_stub, lease_stub, seeded, request_message, field
):
    method = type(request_message).__name__.removesuffix("Request")
    stub = inventory_stub if hasattr(inventory_stub, method) else lease_stub
    before = database_snapshot(seeded)

    error = call_error(getattr(stub, method), request_message)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert field in violation_fields(error), error.details()
    assert field in error.details()
    assert database_snapshot(seeded) == before
    kinds = inventory_stub.ListKinds(inv.ListKindsRequest(), timeout=RPC_TIMEOUT).kinds
    assert len(kinds) == 3
