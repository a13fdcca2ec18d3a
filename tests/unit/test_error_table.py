"""THE table from domain errors to status codes: complete, most specific row
first, and each row building the details the contract promises."""

from __future__ import annotations

import logging

import peewee
import pytest
from google.rpc import code_pb2, error_details_pb2

from broker.api.errors import (
    ERROR_DOMAIN,
    MAX_DETAIL_ITEMS,
    MAX_DETAILS_BYTES,
    MAX_MESSAGE_BYTES,
    STATUS_TABLE,
    Throttled,
    status_of,
)
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


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_undecodable_requests_are_reported_at_most_once_an_interval_with_a_count():
    now = [0.0]
    throttled = Throttled(60.0, clock=lambda: now[0])
    logger = logging.getLogger("broker.api.errors")
    keep = Keep()
    logger.addHandler(keep)
    try:
        for step in range(12):
            now[0] = step * 10.0  # 0, 10, … 110 s
            throttled.note("/broker.v1.LeaseService/GetLease")
    finally:
        logger.removeHandler(keep)

    # At 0 s the first; at 60 s the six since (10 … 60 s); nothing more yet.
    assert [record.args[0] for record in keep.records] == [1, 6]
    assert all(record.exc_info is None for record in keep.records)


def test_a_long_message_is_cut_to_fit_in_the_trailers():
    status = status_of(errors.ConflictError("é" * 4000))
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    assert status.message.endswith("…")
    assert status.message.startswith("é" * 100)


def test_details_too_large_for_the_trailers_are_shortened():
    violations = [errors.FieldViolation(f"field{n}." + "x" * 4000, "y" * 4000) for n in range(50)]
    status = status_of(errors.InvalidArgumentError(violations))

    assert sum(detail.ByteSize() for detail in status.details) <= MAX_DETAILS_BYTES
    [bad_request] = details_of(status)
    assert len(bad_request.field_violations) == MAX_DETAIL_ITEMS
    first = bad_request.field_violations[0]
    assert (first.field, first.description) == (
        errors.clip("field0." + "x" * 4000),
        errors.clip("y" * 4000),
    )


def test_details_that_fit_are_kept_whole():
    violation = errors.FieldViolation("requirements[0].constraints[0].field", "is required")
    [bad_request] = details_of(status_of(errors.InvalidArgumentError([violation] * 5)))
    assert len(bad_request.field_violations) == 5


def test_errors_quote_a_short_prefix_of_long_input():
    error = errors.NotFoundError("lease", "L" * 4000)
    assert error.resource_name == "L" * errors.QUOTE_LIMIT + "…"
    assert len(error.message) < 2 * errors.QUOTE_LIMIT
    assert errors.clip("short") == "short"
