"""THE table from domain errors to status codes: complete, most specific row
first, and each row building the details the contract promises."""

from __future__ import annotations

import peewee
import pytest
from google.rpc import code_pb2, error_details_pb2

from broker.api.errors import ERROR_DOMAIN, STATUS_TABLE, status_of
from broker.domain import errors
from broker.domain.values import HolderView
from broker.v1 import lease_pb2


def subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *subclasses(sub)}
    return found


def domain_errors() -> list[type]:
    """Every BrokerError subclass declared in the domain's error module."""
    return sorted(
        (cls for cls in subclasses(errors.BrokerError) if cls.__module__ == errors.__name__),
        key=lambda cls: cls.__name__,
    )


def details_of(status) -> list:
    """The unpacked details, as messages of the types they declare."""
    types = [
        error_details_pb2.BadRequest,
        error_details_pb2.ResourceInfo,
        error_details_pb2.ErrorInfo,
        error_details_pb2.PreconditionFailure,
        lease_pb2.AcquireBlocked,
    ]
    unpacked = []
    for detail in status.details:
        cls = next(t for t in types if detail.Is(t.DESCRIPTOR))
        message = cls()
        detail.Unpack(message)
        unpacked.append(message)
    return unpacked


def test_the_domain_declares_the_errors_the_table_knows():
    assert len(domain_errors()) >= 8


@pytest.mark.parametrize("cls", domain_errors(), ids=lambda cls: cls.__name__)
def test_every_domain_error_has_its_own_row(cls):
    classes = [row[0] for row in STATUS_TABLE]
    assert cls in classes
    # The first row that matches is its own: no more general row shadows it.
    first = next(row_cls for row_cls in classes if issubclass(cls, row_cls))
    assert first is cls


def test_invalid_argument_names_each_field():
    error = errors.InvalidArgumentError(
        [errors.FieldViolation("ttl", "too long"), errors.FieldViolation("holder", "too long")]
    )
    status = status_of(error)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == error.message
    [bad_request] = details_of(status)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("ttl", "too long"),
        ("holder", "too long"),
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFoundError("lease", "L1"), code_pb2.NOT_FOUND),
        (errors.AlreadyExistsError("resource", "c1"), code_pb2.ALREADY_EXISTS),
    ],
)
def test_not_found_and_already_exists_carry_resource_info(error, code):
    status = status_of(error)
    assert status.code == code
    [info] = details_of(status)
    assert isinstance(info, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == (error.resource_type, error.resource_name)


@pytest.mark.parametrize("reason", ["NOT_HOLDER", "NO_SECRET"])
def test_permission_denied_carries_its_reason(reason):
    status = status_of(errors.PermissionDeniedError("not yours", reason))
    assert status.code == code_pb2.PERMISSION_DENIED
    [info] = details_of(status)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)


def test_failed_precondition_carries_the_violation():
    violation = errors.PreconditionViolation("LEASE_EXPIRED", "leases/L1", "lease L1 expired")
    status = status_of(errors.FailedPreconditionError(violation))
    assert status.code == code_pb2.FAILED_PRECONDITION
    assert status.message == "lease L1 expired"
    failure, info = details_of(status)
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("LEASE_EXPIRED", "leases/L1", "lease L1 expired")
    ]
    assert info.reason == "LEASE_EXPIRED"


def test_resource_busy_carries_acquire_blocked_with_the_holders():
    holders = [HolderView("p1", "L1", "alice", 1_800_000_030.5), HolderView("p2", "L2", "", 1.0)]
    status = status_of(errors.ResourceBusyError(1, "dut", "Phone", holders))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    blocked, info = details_of(status)
    assert isinstance(blocked, lease_pb2.AcquireBlocked)
    assert (blocked.requirement_index, blocked.label, blocked.kind) == (1, "dut", "Phone")
    assert [(h.resource, h.lease_id, h.holder) for h in blocked.holders] == [
        ("p1", "L1", "alice"),
        ("p2", "L2", ""),
    ]
    assert blocked.holders[0].expire_time.ToNanoseconds() == 1_800_000_030_500_000_000
    assert info.reason == "RESOURCES_BUSY"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ConflictError("stale etag"), code_pb2.ABORTED),
        (errors.UnavailableError("shutting down"), code_pb2.UNAVAILABLE),
        (peewee.OperationalError("database is locked"), code_pb2.UNAVAILABLE),
        (peewee.InterfaceError("connection closed"), code_pb2.UNAVAILABLE),
    ],
)
def test_transient_and_conflict_codes(error, code):
    status = status_of(error)
    assert status.code == code
    assert status.message


def test_conflict_carries_an_error_info():
    [info] = details_of(status_of(errors.ConflictError("stale etag")))
    assert (info.reason, info.domain) == ("CONFLICT", ERROR_DOMAIN)


@pytest.mark.parametrize(
    "error",
    [ValueError("boom"), KeyError("k"), peewee.IntegrityError("unique"), Exception("?")],
    ids=lambda error: type(error).__name__,
)
def test_unknown_exceptions_have_no_status(error):
    assert status_of(error) is None
