"""Generic request checks read off the contract: REQUIRED fields, size caps,
enum numbers, with every violation named by its path."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from google.protobuf import field_mask_pb2

from broker.api import validation
from broker.api.errors import INLINE_CHECK_BYTES, ErrorInterceptor, guarded, guarded_stream
from broker.domain.errors import InvalidArgumentError
from broker.field_values import to_field_value
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


def test_nul_characters_are_refused_in_any_string():
    request = inventory.CreateResourceRequest(
        resource=resource_pb2.Resource(
            name="c\0",
            kind="Calculator",
            fields={"ip\0": to_field_value(1), "os": to_field_value("a\0")},
        )
    )
    found = validation.violations(request)
    assert sorted(v.field for v in found) == [
        "resource.fields",
        "resource.fields.os.string_value",
        "resource.name",
    ]
    assert all("NUL" in v.description for v in found)


def test_the_entries_of_a_request_have_a_budget():
    values = lease_pb2.FieldValueList(values=[to_field_value(n) for n in range(1000)])
    requirement = phone_requirement(constraints=[lease_pb2.Constraint(field="v", any_of=values)])
    within = lease_service.AcquireLeaseRequest(requirements=[requirement] * 16)
    over = lease_service.AcquireLeaseRequest(requirements=[requirement] * 900)

    assert validation.violations(within) == []
    [violation] = validation.violations(over)
    # 900 requirements, then 1 constraint and 1,000 values each: the 16th
    # requirement's values pass 16,384.
    assert violation.field == "requirements[15].constraints[0].any_of.values"
    assert str(validation.MAX_ITEMS) in violation.description


def test_checking_stops_at_enough_violations():
    request = lease_service.AcquireLeaseRequest(
        requirements=[lease_pb2.Requirement(label=LONG)] * 100
    )
    assert len(validation.violations(request)) == validation.MAX_VIOLATIONS


class CheckThreads:
    """Observes which threads run `validation.check`, through the profiler
    hook of this thread and of every thread started meanwhile."""

    def __init__(self):
        self.threads: list[int] = []

    def profile(self, frame, event, arg):
        if event == "call" and frame.f_code is validation.check.__code__:
            self.threads.append(threading.get_ident())

    def __enter__(self):
        threading.setprofile(self.profile)
        sys.setprofile(self.profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def test_small_requests_are_checked_on_the_event_loop_and_large_ones_off_it():
    """Unary requests and each message of a request stream alike: checking
    a request of at most `INLINE_CHECK_BYTES` costs less than a trip to a
    checking thread; a larger one, which may take long, never holds up the
    loop."""

    async def unary(request, context):
        return "answered"

    async def streaming(requests, context):
        async for request in requests:
            yield request.holder

    async def requests():
        for holder in ("alice", "bob"):
            yield lease_service.OpenSessionRequest(holder=holder)

    large = inventory.GetResourceRequest(name="c" * (INLINE_CHECK_BYTES + 1))

    async def calls(interceptor):
        answered = await guarded(unary, "/t/Unary", interceptor.check, interceptor.limit)(
            inventory.GetResourceRequest(name="c1"), None
        )
        handle = guarded_stream(
            streaming, "/t/Stream", interceptor.check, interceptor.limit, streamed=True
        )
        holders = [holder async for holder in handle(requests(), None)]
        small_checks = len(observed.threads)
        with pytest.raises(InvalidArgumentError):
            await interceptor.check(large)
        return threading.get_ident(), answered, holders, small_checks

    with CheckThreads() as observed:
        interceptor = ErrorInterceptor()
        try:
            loop_thread, answered, holders, small_checks = asyncio.run(calls(interceptor))
        finally:
            interceptor.close()

    assert (answered, holders) == ("answered", ["alice", "bob"])
    assert small_checks == 3
    assert observed.threads[:3] == [loop_thread] * 3
    assert len(observed.threads) == 4
    assert observed.threads[3] != loop_thread
