"""`broker.v1.LeaseService` through the real server and the generated stubs:
every RPC's happy path and its documented errors with their details."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from broker.v1 import inventory_service_pb2, lease_pb2, lease_service_pb2
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import (
    acquire,
    acquire_request,
    all_leases,
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
    wait_until,
)

ACTIVE = lease_pb2.LEASE_STATE_ACTIVE


def renew(lease_stub, lease_id: str, secret: str) -> lease_pb2.Lease:
    request = lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret)
    return lease_stub.RenewLease(request, timeout=RPC_TIMEOUT).lease


def release(lease_stub, lease_id: str, secret: str) -> lease_pb2.Lease:
    request = lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret)
    return lease_stub.ReleaseLease(request, timeout=RPC_TIMEOUT).lease


def revoke(lease_stub, lease_id: str, reason: str, **kwargs) -> lease_pb2.Lease:
    request = lease_service_pb2.RevokeLeaseRequest(lease_id=lease_id, reason=reason)
    return lease_stub.RevokeLease(request, timeout=RPC_TIMEOUT, **kwargs).lease


def owner(inventory_stub, name: str) -> str:
    return get_resource(inventory_stub, name).owner


def granted_names(lease: lease_pb2.Lease) -> list[str]:
    return [grant.resource.name for grant in lease.grants]


# --------------------------------------------------------------- AcquireLease


def test_acquire_grants_the_named_resource_with_a_secret_and_a_fencing_token(
    lease_stub, inventory_stub, calculators
):
    response = acquire(
        lease_stub, requirement("Calculator", label="calc", name="calc-2"), ttl=45, holder="alice"
    )

    lease = response.lease
    assert response.secret and lease.lease_id
    assert (lease.holder, lease.state) == ("alice", ACTIVE)
    assert lease.ttl.ToSeconds() == 45
    assert lease.expire_time.ToNanoseconds() - lease.create_time.ToNanoseconds() == 45 * 10**9
    assert not lease.HasField("end_time") and lease.end_reason == ""
    assert not lease.HasField("max_expire_time")  # no leases.max_lifetime by default
    [grant] = lease.grants
    assert (grant.requirement_index, grant.label) == (0, "calc")
    assert grant.resource.name == "calc-2"
    assert grant.resource.fields["ip_address"].string_value == "10.0.0.2"
    assert grant.resource.owner == "alice"
    assert list(grant.resource.lease_ids) == [lease.lease_id]
    assert grant.fencing_token == grant.resource.fencing_token == 1
    assert owner(inventory_stub, "calc-2") == "alice"
    assert get_lease(lease_stub, lease.lease_id) == lease


def test_acquire_without_ttl_takes_the_configured_default(lease_stub, calculators, config):
    lease = acquire(lease_stub, requirement("Calculator")).lease

    assert lease.ttl.ToNanoseconds() / 1e9 == config.leases.default_ttl


def test_the_holder_comes_from_metadata_unless_the_request_names_one(
    lease_stub, inventory_stub, calculators
):
    metadata = (("x-broker-holder", "carol@bench-3"),)

    from_metadata = acquire(
        lease_stub, requirement("Calculator", name="calc-1"), holder="", metadata=metadata
    ).lease
    from_request = acquire(
        lease_stub, requirement("Calculator", name="calc-2"), holder="dave", metadata=metadata
    ).lease

    assert from_metadata.holder == "carol@bench-3"
    assert owner(inventory_stub, "calc-1") == "carol@bench-3"
    assert from_request.holder == "dave"
    assert [lease.lease_id for lease in all_leases(lease_stub, holder="carol@bench-3")] == [
        from_metadata.lease_id
    ]


def test_acquire_of_several_requirements_grants_distinct_resources_per_requirement(
    lease_stub, inventory_stub, calculators
):
    create_resource(inventory_stub, resource("Phone", "phone-1", {"os": "android", "version": 14}))
    create_resource(inventory_stub, resource("Phone", "phone-2", {"os": "ios", "version": 17}))

    lease = acquire(
        lease_stub,
        requirement("Calculator", count=2, label="calcs"),
        requirement("Phone", label="droid", os="android"),
    ).lease

    assert [(g.requirement_index, g.label) for g in lease.grants] == [
        (0, "calcs"),
        (0, "calcs"),
        (1, "droid"),
    ]
    names = granted_names(lease)
    assert len(set(names[:2])) == 2 and set(names[:2]) <= set(calculators)
    assert names[2] == "phone-1"


def test_acquire_finds_an_assignment_that_a_greedy_first_match_would_miss(
    lease_stub, inventory_stub
):
    # "any calculator" listed first would greedily take calc-1, which the
    # second requirement needs by name.
    create_resource(inventory_stub, calculator("calc-1"))
    create_resource(inventory_stub, calculator("calc-2"))

    lease = acquire(
        lease_stub,
        requirement("Calculator", label="any"),
        requirement("Calculator", label="named", name="calc-1"),
    ).lease

    assert granted_names(lease) == ["calc-2", "calc-1"]


def test_acquire_is_all_or_nothing_when_one_requirement_is_held(
    lease_stub, inventory_stub, calculators
):
    holder = acquire(lease_stub, requirement("Calculator", name="calc-3"), holder="alice")

    error = expect_error(
        lease_stub.AcquireLease,
        acquire_request(
            requirement("Calculator", name="calc-1"),
            requirement("Calculator", name="calc-2"),
            requirement("Calculator", name="calc-3"),
            holder="bob",
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )

    assert detail(error, lease_pb2.AcquireBlocked).requirement_index == 2
    assert owner(inventory_stub, "calc-1") == owner(inventory_stub, "calc-2") == ""
    assert [lease.lease_id for lease in all_leases(lease_stub, state=ACTIVE)] == [
        holder.lease.lease_id
    ]


def test_acquire_of_held_resources_is_resource_exhausted_naming_the_holders(
    lease_stub, calculators
):
    first = acquire(lease_stub, requirement("Calculator", count=2), holder="alice").lease
    second = acquire(lease_stub, requirement("Calculator"), holder="bob").lease

    error = expect_error(
        lease_stub.AcquireLease,
        acquire_request(
            requirement("Calculator", name="calc-1"),
            requirement("Calculator", label="two", count=2),
            holder="carol",
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )

    blocked = detail(error, lease_pb2.AcquireBlocked)
    assert blocked.kind == "Calculator"
    assert blocked.requirement_index in (0, 1)
    assert blocked.label == ("two" if blocked.requirement_index == 1 else "")
    expire = {first.lease_id: first.expire_time, second.lease_id: second.expire_time}
    holders = {h.resource: h for h in blocked.holders}
    assert holders, blocked
    for name, holder in holders.items():
        lease = first if name in granted_names(first) else second
        assert (holder.lease_id, holder.holder) == (lease.lease_id, lease.holder)
        assert holder.expire_time == expire[lease.lease_id]
    reason = detail(error, error_details_pb2.ErrorInfo).reason
    assert reason == "RESOURCES_BUSY"


@pytest.mark.parametrize(
    ("requirements", "holder", "violation_type", "subject"),
    [
        pytest.param(
            [requirement("Toaster")], "bob", "UNKNOWN_KIND", "requirements[0]", id="unknown-kind"
        ),
        pytest.param(
            [requirement("Calculator"), requirement("Calculator", colour="red")],
            "bob",
            "UNKNOWN_FIELD",
            "requirements[1].constraints[0]",
            id="unknown-field",
        ),
        pytest.param(
            [requirement("Calculator", count=5)],
            "bob",
            "UNSATISFIABLE",
            "requirements[0]",
            id="too-few-resources",
        ),
        pytest.param(
            [requirement("Calculator", ip_address="10.9.9.9")],
            "bob",
            "UNSATISFIABLE",
            "requirements[0]",
            id="no-resource-matches",
        ),
        pytest.param(
            [requirement("Calculator", name="calc-1"), requirement("Calculator", name="calc-1")],
            "bob",
            "UNSATISFIABLE",
            "requirements[1]",
            id="same-resource-twice",
        ),
        pytest.param(
            [requirement("Calculator", name="unusable")],
            "bob",
            "UNSATISFIABLE",
            "requirements[0]",
            id="not-usable",
        ),
    ],
)
def test_acquire_that_can_never_be_served_fails_at_once_naming_the_requirement(
    lease_stub, inventory_stub, calculators, requirements, holder, violation_type, subject
):
    create_resource(inventory_stub, calculator("unusable", is_usable=False))
    create_resource(inventory_stub, calculator("alices", reserved_for="alice"))

    error = expect_error(
        lease_stub.AcquireLease,
        acquire_request(*requirements, holder=holder),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    # The first violation names the requirement; any others say why each
    # resource it could use is never granted.
    violation = detail(error, error_details_pb2.PreconditionFailure).violations[0]
    assert (violation.type, violation.subject) == (violation_type, subject)
    assert subject in violation.description
    assert detail(error, error_details_pb2.ErrorInfo).reason == violation_type
    assert all_leases(lease_stub) == []


def test_a_resource_reserved_for_another_is_busy_naming_whom(lease_stub, inventory_stub):
    create_resource(inventory_stub, calculator("alices", reserved_for="alice"))

    error = expect_error(
        lease_stub.AcquireLease,
        acquire_request(requirement("Calculator", name="alices"), holder="bob"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )

    [obstacle] = detail(error, lease_pb2.AcquireBlocked).obstacles
    assert (obstacle.resource, obstacle.cause, obstacle.principal) == (
        "alices",
        lease_pb2.OBSTACLE_CAUSE_RESERVED,
        "alice",
    )
    assert "alices is reserved for alice" in error.details()
    assert all_leases(lease_stub) == []


def test_a_reserved_resource_goes_to_the_holder_it_is_reserved_for(lease_stub, inventory_stub):
    create_resource(inventory_stub, calculator("alices", reserved_for="alice"))

    lease = acquire(lease_stub, requirement("Calculator"), holder="alice").lease

    assert granted_names(lease) == ["alices"]


def test_fencing_tokens_grow_with_every_grant_of_a_resource(lease_stub, calculators):
    tokens = []
    for _ in range(3):
        granted = acquire(lease_stub, requirement("Calculator", name="calc-1"))
        tokens.append(granted.lease.grants[0].fencing_token)
        release(lease_stub, granted.lease.lease_id, granted.secret)

    assert tokens == sorted(set(tokens)) and len(tokens) == 3


def test_a_shared_kind_is_granted_to_several_leases_at_once(lease_stub, inventory_stub):
    create_resource(inventory_stub, resource("Licence", "matlab-1", {"product": "matlab"}))

    first = acquire(lease_stub, requirement("Licence"), holder="alice").lease
    second = acquire(lease_stub, requirement("Licence"), holder="bob").lease

    assert granted_names(first) == granted_names(second) == ["matlab-1"]
    assert second.grants[0].fencing_token > first.grants[0].fencing_token
    shared = get_resource(inventory_stub, "matlab-1")
    assert shared.owner == ""
    assert set(shared.lease_ids) == {first.lease_id, second.lease_id}


def test_an_unusable_resource_is_never_granted(lease_stub, inventory_stub, calculators):
    inventory_stub.UpdateResource(
        inventory_service_pb2.UpdateResourceRequest(
            resource=calculator("calc-1", is_usable=False),
            update_mask=field_mask_pb2.FieldMask(paths=["is_usable"]),
        ),
        timeout=RPC_TIMEOUT,
    )

    lease = acquire(lease_stub, requirement("Calculator", count=2)).lease

    assert sorted(granted_names(lease)) == ["calc-2", "calc-3"]


# ------------------------------------------------------------------ RenewLease


def test_renew_extends_the_lease_by_its_ttl_from_now(lease_stub, calculators):
    granted = acquire(lease_stub, requirement("Calculator"), ttl=120)

    renewed = renew(lease_stub, granted.lease.lease_id, granted.secret)

    assert renewed.state == ACTIVE
    assert renewed.expire_time.ToNanoseconds() > granted.lease.expire_time.ToNanoseconds()
    assert get_lease(lease_stub, granted.lease.lease_id).expire_time == renewed.expire_time


@pytest.mark.parametrize("action", ["RenewLease", "ReleaseLease"])
@pytest.mark.parametrize(
    ("secret_of", "reason"),
    [pytest.param("none", "NO_SECRET", id="no-secret"), pytest.param("other", "NOT_HOLDER")],
)
def test_only_the_holder_may_renew_or_release(
    lease_stub, inventory_stub, calculators, action, secret_of, reason
):
    mine = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="alice")
    other = acquire(lease_stub, requirement("Calculator", name="calc-2"), holder="mallory")
    secret = "" if secret_of == "none" else other.secret
    request_type = getattr(lease_service_pb2, f"{action}Request")

    error = expect_error(
        getattr(lease_stub, action),
        request_type(lease_id=mine.lease.lease_id, secret=secret),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    assert detail(error, error_details_pb2.ErrorInfo).reason == reason
    assert get_lease(lease_stub, mine.lease.lease_id) == mine.lease
    assert owner(inventory_stub, "calc-1") == "alice"


@pytest.mark.parametrize("action", ["RenewLease", "ReleaseLease", "GetLease", "RevokeLease"])
def test_an_unknown_lease_is_not_found(lease_stub, action):
    request = getattr(lease_service_pb2, f"{action}Request")(
        lease_id="00000000-0000-0000-0000-000000000000"
    )
    if action == "RevokeLease":
        request.reason = "cleanup"
    elif action != "GetLease":
        request.secret = "whatever"

    error = expect_error(getattr(lease_stub, action), request, grpc.StatusCode.NOT_FOUND)

    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("lease", request.lease_id)


# ---------------------------------------------------------------- ReleaseLease


def test_release_ends_the_lease_and_frees_its_resources(lease_stub, inventory_stub, calculators):
    granted = acquire(lease_stub, requirement("Calculator", count=3), holder="alice")

    released = release(lease_stub, granted.lease.lease_id, granted.secret)

    assert released.state == lease_pb2.LEASE_STATE_RELEASED
    assert released.HasField("end_time")
    assert all(owner(inventory_stub, name) == "" for name in calculators)
    assert get_lease(lease_stub, granted.lease.lease_id) == released
    again = acquire(lease_stub, requirement("Calculator", count=3), holder="bob").lease
    assert sorted(granted_names(again)) == calculators


@pytest.mark.parametrize("action", ["RenewLease", "ReleaseLease"])
def test_a_released_lease_can_be_neither_renewed_nor_released(lease_stub, calculators, action):
    granted = acquire(lease_stub, requirement("Calculator"))
    release(lease_stub, granted.lease.lease_id, granted.secret)
    request_type = getattr(lease_service_pb2, f"{action}Request")

    error = expect_error(
        getattr(lease_stub, action),
        request_type(lease_id=granted.lease.lease_id, secret=granted.secret),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    violation = precondition(error)
    assert violation.type == "LEASE_RELEASED"
    assert "released" in error.details()


# ----------------------------------------------------------------- RevokeLease


def test_revoke_ends_the_lease_records_why_and_frees_the_resource(
    lease_stub, inventory_stub, calculators
):
    granted = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="alice")

    revoked = revoke(
        lease_stub,
        granted.lease.lease_id,
        "bench-1 goes to maintenance",
        metadata=(("x-broker-holder", "admin"),),
    )

    assert revoked.state == lease_pb2.LEASE_STATE_REVOKED
    assert revoked.end_reason == "bench-1 goes to maintenance"
    assert revoked.HasField("end_time")
    assert owner(inventory_stub, "calc-1") == ""
    assert granted_names(acquire(lease_stub, requirement("Calculator", name="calc-1")).lease) == [
        "calc-1"
    ]


@pytest.mark.parametrize("action", ["RenewLease", "ReleaseLease"])
def test_renew_or_release_after_revoke_says_revoked(lease_stub, calculators, action):
    granted = acquire(lease_stub, requirement("Calculator"))
    revoke(lease_stub, granted.lease.lease_id, "needed elsewhere")
    request_type = getattr(lease_service_pb2, f"{action}Request")

    error = expect_error(
        getattr(lease_stub, action),
        request_type(lease_id=granted.lease.lease_id, secret=granted.secret),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    violation = precondition(error)
    assert violation.type == "LEASE_REVOKED"
    assert violation.subject == f"leases/{granted.lease.lease_id}"
    assert "revoked" in error.details()


def test_revoking_an_ended_lease_is_failed_precondition(lease_stub, calculators):
    granted = acquire(lease_stub, requirement("Calculator"))
    revoke(lease_stub, granted.lease.lease_id, "first")

    error = expect_error(
        lease_stub.RevokeLease,
        lease_service_pb2.RevokeLeaseRequest(lease_id=granted.lease.lease_id, reason="second"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert precondition(error).type == "LEASE_REVOKED"
    assert get_lease(lease_stub, granted.lease.lease_id).end_reason == "first"


# ------------------------------------------------------------------- expiry


def test_a_lease_not_renewed_expires_and_frees_its_resource(
    lease_stub, inventory_stub, calculators
):
    granted = acquire(lease_stub, requirement("Calculator", name="calc-1"), ttl=1)
    lease_id = granted.lease.lease_id

    expired = wait_until(
        lambda: (
            (lease := get_lease(lease_stub, lease_id)).state == lease_pb2.LEASE_STATE_EXPIRED
            and lease
        ),
        timeout=10,
        what="the lease to expire",
    )

    assert expired.end_time.ToNanoseconds() >= granted.lease.expire_time.ToNanoseconds()
    assert owner(inventory_stub, "calc-1") == ""
    error = expect_error(
        lease_stub.RenewLease,
        lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=granted.secret),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition(error).type == "LEASE_EXPIRED"


# -------------------------------------------------------- GetLease, ListLeases


def test_secrets_never_appear_outside_the_acquire_response(lease_stub, calculators):
    granted = [
        acquire(lease_stub, requirement("Calculator", name=name), holder=f"h{n}")
        for n, name in enumerate(calculators)
    ]
    renewed = renew(lease_stub, granted[0].lease.lease_id, granted[0].secret)
    released = release(lease_stub, granted[1].lease.lease_id, granted[1].secret)
    revoked = revoke(lease_stub, granted[2].lease.lease_id, "test")

    responses = [
        renewed,
        released,
        revoked,
        *(get_lease(lease_stub, g.lease.lease_id) for g in granted),
        lease_stub.ListLeases(lease_service_pb2.ListLeasesRequest(), timeout=RPC_TIMEOUT),
    ]

    wire = b"".join(message.SerializeToString() for message in responses)
    assert len(wire) > 0
    for g in granted:
        assert g.secret.encode() not in wire
        assert g.secret.encode() not in g.lease.SerializeToString()


def test_list_leases_pages_newest_first_and_filters(lease_stub, inventory_stub, calculators):
    create_resource(inventory_stub, resource("Licence", "matlab-1", {"product": "matlab"}))
    acquired = []
    for n in range(7):
        granted = acquire(lease_stub, requirement("Licence"), holder=f"user-{n % 2}")
        acquired.append(granted.lease.lease_id)
        if n % 3 == 0:
            release(lease_stub, granted.lease.lease_id, granted.secret)
    calc = acquire(lease_stub, requirement("Calculator", name="calc-1"), holder="user-0")
    acquired.append(calc.lease.lease_id)

    listed = list(
        pages(lease_stub.ListLeases, lease_service_pb2.ListLeasesRequest(page_size=3), "leases")
    )

    assert [len(page) for page in listed] == [3, 3, 2]
    assert [lease.lease_id for page in listed for lease in page] == acquired[::-1]

    def ids(**filters):
        return [lease.lease_id for lease in all_leases(lease_stub, page_size=2, **filters)]

    assert ids(state=lease_pb2.LEASE_STATE_RELEASED) == [acquired[6], acquired[3], acquired[0]]
    assert ids(state=ACTIVE) == [acquired[i] for i in (7, 5, 4, 2, 1)]
    assert ids(holder="user-1") == [acquired[i] for i in (5, 3, 1)]
    assert ids(resource="calc-1") == [acquired[7]]
    assert ids(resource="matlab-1", holder="user-0", state=ACTIVE) == [acquired[4], acquired[2]]
    assert ids(holder="nobody") == []


def test_list_leases_pages_stay_stable_while_new_leases_arrive(lease_stub, calculators):
    first_ids = [
        acquire(lease_stub, requirement("Calculator", name=name)).lease.lease_id
        for name in calculators[:2]
    ]
    first_page = lease_stub.ListLeases(
        lease_service_pb2.ListLeasesRequest(page_size=1), timeout=RPC_TIMEOUT
    )
    acquire(lease_stub, requirement("Calculator", name=calculators[2]))

    second_page = lease_stub.ListLeases(
        lease_service_pb2.ListLeasesRequest(page_size=1, page_token=first_page.next_page_token),
        timeout=RPC_TIMEOUT,
    )

    assert [lease.lease_id for lease in first_page.leases] == [first_ids[1]]
    assert [lease.lease_id for lease in second_page.leases] == [first_ids[0]]
    assert second_page.next_page_token == ""


def test_acquire_matches_float_and_boolean_constraints(lease_stub, inventory_stub):
    create_resource(inventory_stub, resource("Phone", "phone-1", {"os": "android", "rooted": True}))
    create_resource(
        inventory_stub, resource("Phone", "phone-2", {"os": "android", "battery": 4500.0})
    )

    lease = acquire(
        lease_stub,
        lease_pb2.Requirement(
            kind="Phone",
            constraints=[constraint("battery", 4500.0), constraint("rooted", False)],
        ),
    ).lease

    assert granted_names(get_lease(lease_stub, lease.lease_id)) == ["phone-2"]
