"""Bad input, RPC by RPC: each malformed request gets INVALID_ARGUMENT with a
`google.rpc.BadRequest` naming the field and a short message, changes
nothing in the database, and leaves the server serving. Every test runs on
SQLite and on PostgreSQL: both refuse the same inputs with the same codes."""

from __future__ import annotations

import base64
import dataclasses
import json

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2

from broker.api.errors import MAX_MESSAGE_BYTES
from broker.api.server import SERVER_OPTIONS
from broker.domain.errors import QUOTE_LIMIT
from broker.models.database import close_database, open_database
from broker.v1 import inventory_service_pb2 as inv
from broker.v1 import lease_pb2, resource_pb2
from broker.v1 import lease_service_pb2 as lease
from tests.conftest import RPC_TIMEOUT, make_config
from tests.integration.helpers import (
    acquire,
    acquire_request,
    all_resources,
    calculator,
    call_error,
    constraint,
    create_resource,
    detail,
    requirement,
    resource,
    violation_fields,
)
from tests.kinds import TEST_KINDS

LONG = "x" * 4097
NAME_129 = "n" * 129
A_LEASE_ID = "00000000-0000-0000-0000-000000000000"
# A well-formed token of the other listing, and tokens this broker never made.
LEASES_TOKEN = "eyJ0aW1lIjoxLjAsImlkIjoiYSJ9"  # {"time":1.0,"id":"a"}
RESOURCES_TOKEN = "eyJhZnRlciI6ImEifQ"  # {"after":"a"}
WRONG_TYPES_TOKEN = "eyJ0aW1lIjoieCIsImlkIjoxfQ"  # {"time":"x","id":1}
INT64_MAX = 2**63 - 1
# Past the entries a request may hold in all: 17 lists of 1,000 values.
OVER_BUDGET = 17


def token(position: dict) -> str:
    """A page token as the broker encodes one, holding anything."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def waiters_token(priority=0, waiter_id=1, position=0) -> lease.ListWaitersRequest:
    return lease.ListWaitersRequest(
        page_token=token({"priority": priority, "id": waiter_id, "position": position})
    )


def leases_token(time=1.0, lease_id="a") -> lease.ListLeasesRequest:
    return lease.ListLeasesRequest(page_token=token({"time": time, "id": lease_id}))


def resources_token(after) -> inv.ListResourcesRequest:
    return inv.ListResourcesRequest(page_token=token({"after": after}))


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


def create_port(port: int) -> inv.CreateResourceRequest:
    return create(resource("Calculator", "calc-9", {"ip_address": "10.0.0.9", "port": port}))


def create_gauge(**fields) -> inv.CreateResourceRequest:
    return create(resource("Gauge", "gauge-9", fields))


def acquire_with(*constraints: lease_pb2.Constraint) -> lease.AcquireLeaseRequest:
    return acquire_request(lease_pb2.Requirement(kind="Calculator", constraints=constraints))


STRING_VALUE = resource_pb2.FieldValue(string_value="x")
# An any_of whose second value has the wrong type for an IP address.
BAD_IP_LIST = constraint("ip_address", "10.0.0.1", 7)
THOUSAND_PORTS = constraint("port", *range(1000))
THOUSAND_GROUPS = constraint("group", *map(str, range(1000)))


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
    # --------------------------------------------------------------- ListWaiters
    bad("list-waiters-page-size-1001", lease.ListWaitersRequest(page_size=1001), "page_size"),
    bad(
        "list-waiters-garbage-token", lease.ListWaitersRequest(page_token="garbage!"), "page_token"
    ),
    # ------------------------------------------ forged page tokens, every listing
    bad("list-waiters-token-huge-priority", waiters_token(priority=2**64), "page_token"),
    bad("list-waiters-token-huge-id", waiters_token(waiter_id=10**30), "page_token"),
    bad("list-waiters-token-huge-position", waiters_token(position=2**63), "page_token"),
    bad("list-waiters-token-negative-huge-id", waiters_token(waiter_id=-(2**70)), "page_token"),
    bad("list-waiters-token-boolean", waiters_token(priority=True), "page_token"),
    bad("list-leases-token-huge-time", leases_token(time=10**400), "page_token"),
    bad("list-leases-token-infinite-time", leases_token(time=float("inf")), "page_token"),
    bad("list-leases-token-nan-time", leases_token(time=float("nan")), "page_token"),
    bad("list-leases-token-nul-id", leases_token(lease_id="a\0"), "page_token"),
    bad("list-resources-token-huge-integer", resources_token(2**64), "page_token"),
    bad("list-resources-token-nul", resources_token("calc\0"), "page_token"),
    bad("list-resources-token-long", resources_token("a" * 300), "page_token"),
    # ------------------------ integers past the width of the field, both backends
    bad("create-port-2^31", create_port(2**31), "resource.fields.port"),
    bad("create-port-2^40", create_port(2**40), "resource.fields.port"),
    bad("create-port-2^63-1", create_port(INT64_MAX), "resource.fields.port"),
    bad("create-port-below-int32", create_port(-(2**31) - 1), "resource.fields.port"),
    bad("create-version-2^31", create_phone(version=2**31), "resource.fields.version"),
    bad("create-smallint-2^15", create_gauge(channel=2**15), "resource.fields.channel"),
    bad(
        "update-port-2^40",
        update(resource("Calculator", "calc-1", {"port": 2**40}), "fields.port"),
        "resource.fields.port",
    ),
    bad(
        "list-resources-port-2^40",
        inv.ListResourcesRequest(kind="Calculator", constraints=[constraint("port", 2**40)]),
        "constraints[0].equals",
    ),
    bad(
        "list-resources-port-list-2^63-1",
        inv.ListResourcesRequest(
            kind="Calculator", constraints=[constraint("port", 1357, INT64_MAX)]
        ),
        "constraints[0].any_of.values[1]",
    ),
    bad(
        "acquire-port-2^31",
        acquire_with(constraint("port", 2**31)),
        "requirements[0].constraints[0].equals",
    ),
    # --------------------------- floats past a 32-bit float field, both backends
    bad("create-float32-overflow", create_phone(battery=1e39), "resource.fields.battery"),
    bad("create-float32-underflow", create_phone(battery=1e-46), "resource.fields.battery"),
    bad(
        "list-resources-float32-overflow",
        inv.ListResourcesRequest(kind="Phone", constraints=[constraint("battery", 1e300, 1.0)]),
        "constraints[0].any_of.values[0]",
    ),
    # ------------------------------------------------ NUL characters, any string
    bad("create-name-nul", create(calculator("calc\0")), "resource.name"),
    bad("create-comment-nul", create(calculator("calc-9", comment="a\0b")), "resource.comment"),
    bad("create-group-nul", create(calculator("calc-9", group="g\0")), "resource.group"),
    bad("create-field-value-nul", create_phone(os="andr\0id"), "resource.fields.os.string_value"),
    bad(
        "create-field-key-nul",
        create(resource("Calculator", "calc-9", {"ip_address": "10.0.0.9", "po\0rt": 1})),
        "resource.fields",
    ),
    bad("get-name-nul", inv.GetResourceRequest(name="calc-1\0"), "name"),
    bad("list-resources-kind-nul", inv.ListResourcesRequest(kind="Calc\0"), "kind"),
    bad("list-resources-raw-token-nul", inv.ListResourcesRequest(page_token="a\0"), "page_token"),
    bad(
        "list-resources-constraint-field-nul",
        inv.ListResourcesRequest(constraints=[constraint("gro\0up", "x")]),
        "constraints[0].field",
    ),
    bad(
        "list-resources-constraint-value-nul",
        inv.ListResourcesRequest(constraints=[constraint("group", "a\0")]),
        "constraints[0].equals.string_value",
    ),
    bad(
        "update-comment-nul",
        update(calculator("calc-1", comment="a\0"), "comment"),
        "resource.comment",
    ),
    bad("update-mask-nul", update(calculator("calc-1"), "comm\0ent"), "update_mask.paths[0]"),
    bad("delete-etag-nul", inv.DeleteResourceRequest(name="calc-1", etag="e\0"), "etag"),
    bad(
        "acquire-holder-nul", acquire_request(requirement("Calculator"), holder="al\0ce"), "holder"
    ),
    bad(
        "acquire-kind-nul",
        acquire_request(lease_pb2.Requirement(kind="Calcul\0ator")),
        "requirements[0].kind",
    ),
    bad(
        "acquire-label-nul",
        acquire_request(requirement("Calculator", label="l\0")),
        "requirements[0].label",
    ),
    bad(
        "acquire-request-id-nul",
        lease.AcquireLeaseRequest(requirements=[requirement("Calculator")], request_id="r\0"),
        "request_id",
    ),
    bad(
        "acquire-session-id-nul",
        lease.AcquireLeaseRequest(requirements=[requirement("Calculator")], session_id="s\0"),
        "session_id",
    ),
    bad("renew-lease-id-nul", lease.RenewLeaseRequest(lease_id=A_LEASE_ID + "\0"), "lease_id"),
    bad(
        "renew-secret-nul",
        lease.RenewLeaseRequest(lease_id=A_LEASE_ID, secret="s\0"),
        "secret",
    ),
    bad("release-lease-id-nul", lease.ReleaseLeaseRequest(lease_id="L\0", secret="s"), "lease_id"),
    bad("get-lease-id-nul", lease.GetLeaseRequest(lease_id="L\0"), "lease_id"),
    bad("list-leases-holder-nul", lease.ListLeasesRequest(holder="al\0ce"), "holder"),
    bad("list-leases-resource-nul", lease.ListLeasesRequest(resource="calc\0"), "resource"),
    bad(
        "revoke-reason-nul",
        lease.RevokeLeaseRequest(lease_id=A_LEASE_ID, reason="why\0"),
        "reason",
    ),
    # -------------------------------------------- long input quoted in the error
    bad(
        "create-unknown-field-4000",
        create(resource("Calculator", "calc-9", {"ip_address": "10.0.0.9", "k" * 4000: 1})),
        "resource.fields." + "k" * QUOTE_LIMIT + "…",
    ),
    # ------------------------------------------- the entries a request may hold
    bad(
        "acquire-over-the-entry-budget",
        acquire_with(*[THOUSAND_PORTS] * OVER_BUDGET),
        f"requirements[0].constraints[{OVER_BUDGET - 1}].any_of.values",
    ),
    bad(
        "list-resources-over-the-entry-budget",
        inv.ListResourcesRequest(constraints=[THOUSAND_GROUPS] * OVER_BUDGET),
        f"constraints[{OVER_BUDGET - 1}].any_of.values",
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
def config(tmp_path, database_url):
    """The test kinds and one with numeric fields of every width."""
    return dataclasses.replace(
        make_config(tmp_path, database_url), kinds=(*TEST_KINDS, "tests.kinds.GaugeData")
    )


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
    assert len(error.details().encode()) <= MAX_MESSAGE_BYTES
    assert database_snapshot(seeded) == before
    assert_serving(inventory_stub)


def assert_serving(inventory_stub) -> None:
    kinds = inventory_stub.ListKinds(inv.ListKindsRequest(), timeout=RPC_TIMEOUT).kinds
    assert len(kinds) == 4


LONG_ID = "x" * 4000


@pytest.mark.parametrize(
    ("request_message", "resource_type"),
    [
        pytest.param(lease.RenewLeaseRequest(lease_id=LONG_ID, secret="s"), "lease", id="renew"),
        pytest.param(
            lease.ReleaseLeaseRequest(lease_id=LONG_ID, secret="s"), "lease", id="release"
        ),
        pytest.param(lease.GetLeaseRequest(lease_id=LONG_ID), "lease", id="get-lease"),
        pytest.param(
            lease.RevokeLeaseRequest(lease_id=LONG_ID, reason="why"), "lease", id="revoke"
        ),
        pytest.param(inv.ListResourcesRequest(kind=LONG_ID), "kind", id="list-resources-kind"),
    ],
)
def test_a_long_unknown_id_is_not_found_quoting_a_short_prefix(
    inventory_stub, lease_stub, seeded, request_message, resource_type
):
    """Never RESOURCE_EXHAUSTED for an error too large for the trailers."""
    method = type(request_message).__name__.removesuffix("Request")
    stub = inventory_stub if hasattr(inventory_stub, method) else lease_stub
    before = database_snapshot(seeded)

    error = call_error(getattr(stub, method), request_message)

    assert error.code() == grpc.StatusCode.NOT_FOUND, (error.code(), error.details()[:200])
    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == (resource_type, LONG_ID[:QUOTE_LIMIT] + "…")
    assert len(error.details()) < 2 * QUOTE_LIMIT
    assert database_snapshot(seeded) == before
    assert_serving(inventory_stub)


@pytest.mark.parametrize(
    "request_message",
    [
        pytest.param(acquire_request(requirement("K" * 4000)), id="unknown-kind"),
        pytest.param(
            lease.AcquireLeaseRequest(requirements=[requirement("Calculator")], session_id=LONG_ID),
            id="unknown-session",
        ),
    ],
)
def test_an_error_quoting_long_input_still_fits_in_the_trailers(
    inventory_stub, lease_stub, seeded, request_message
):
    error = call_error(lease_stub.AcquireLease, request_message)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (error.code(), error.details())
    assert len(error.details().encode()) <= MAX_MESSAGE_BYTES
    assert_serving(inventory_stub)


def test_a_request_over_the_size_limit_is_resource_exhausted_naming_it(
    inventory_stub, lease_stub, seeded
):
    limit = dict(SERVER_OPTIONS)["grpc.max_receive_message_length"]
    request = inv.ListResourcesRequest(
        constraints=[constraint("group", *["g" * 4000] * (limit // 4000 + 1))]
    )
    assert request.ByteSize() > limit
    before = database_snapshot(seeded)

    error = call_error(inventory_stub.ListResources, request)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    assert str(limit) in error.details()
    assert database_snapshot(seeded) == before
    assert_serving(inventory_stub)


def test_every_width_is_accepted_alike_on_both_backends(inventory_stub, seeded):
    """The extremes a field's width holds are stored, read back and
    matched the same on SQLite and PostgreSQL."""
    fields = {"serial": INT64_MAX, "channel": 2**15 - 1, "reading": 1e300}
    create_resource(inventory_stub, resource("Gauge", "gauge-1", fields))
    create_resource(
        inventory_stub, resource("Gauge", "gauge-2", {"serial": -(2**63), "channel": -(2**15)})
    )
    create_resource(
        inventory_stub,
        resource("Calculator", "calc-9", {"ip_address": "10.0.0.9", "port": 2**31 - 1}),
    )

    [gauge] = all_resources(
        inventory_stub, kind="Gauge", constraints=[constraint("serial", INT64_MAX)]
    )
    assert gauge.name == "gauge-1"
    assert gauge.fields["serial"].int_value == INT64_MAX
    assert gauge.fields["channel"].int_value == 2**15 - 1
    assert gauge.fields["reading"].float_value == 1e300
    [low] = all_resources(
        inventory_stub, kind="Gauge", constraints=[constraint("channel", -(2**15))]
    )
    assert low.fields["serial"].int_value == -(2**63)
    [calc] = all_resources(
        inventory_stub, kind="Calculator", constraints=[constraint("port", 2**31 - 1)]
    )
    assert calc.name == "calc-9"


def open_session(lease_stub, *messages: lease.OpenSessionRequest):
    return lease_stub.OpenSession(iter(messages), timeout=RPC_TIMEOUT)


def test_a_bad_first_message_of_a_session_stream_is_invalid_argument(
    inventory_stub, lease_stub, seeded
):
    before = database_snapshot(seeded)
    responses = open_session(lease_stub, lease.OpenSessionRequest(holder="al\0ce"))

    with pytest.raises(grpc.RpcError) as error:
        next(responses)

    assert "holder" in violation_fields(error.value)
    assert database_snapshot(seeded) == before
    assert_serving(inventory_stub)


def test_a_bad_message_in_the_middle_of_a_session_stream_is_invalid_argument(
    inventory_stub, lease_stub, seeded
):
    responses = open_session(
        lease_stub,
        lease.OpenSessionRequest(holder="alice"),
        lease.OpenSessionRequest(holder="x" * 4097),
    )

    assert next(responses).session_id
    with pytest.raises(grpc.RpcError) as error:
        next(responses)

    assert "holder" in violation_fields(error.value)
    assert_serving(inventory_stub)
