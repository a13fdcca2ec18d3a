"""The broker's status codes as Python exceptions, with their details unpacked.

The broker reports every failure as a gRPC status code plus `google.rpc`
details. `from_rpc_error` turns a `grpc.RpcError` into one `BrokerError`
subclass, chosen by one table (`ERRORS_BY_CODE`), so callers catch
`ResourceBusyError` instead of comparing codes, and read the details
(`field_violations`, `violations`, `blocked`) as plain Python values.

One error is the SDK's own: `LeaseNotActiveError`, raised by `active()` when
a call that grants or renews a lease returned one that has ended, so that no
caller ever takes an ended lease for one it holds.
"""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.v1 import lease_pb2

# The detail messages the broker sends; any other detail stays a packed `Any`.
DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.ErrorInfo,
    lease_pb2.AcquireBlocked,
)


class BrokerError(Exception):
    """A call to the broker failed: `code` says how, `message` says why, and
    `details` holds the unpacked `google.rpc` detail messages."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: list[Message] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: list[Message] = details or []

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def reasons(self) -> list[str]:
        """Why, resource by resource, in words (a resource out of service,
        reserved for someone, held; no resource of that name): from the
        violations after the first, or from the blocked requirement's
        obstacles. Empty when the broker gave none."""
        for detail in self.details:
            if isinstance(detail, lease_pb2.AcquireBlocked):
                return [obstacle.text for obstacle in detail.obstacles]
        for detail in self.details:
            if isinstance(detail, error_details_pb2.PreconditionFailure):
                return [violation.description for violation in detail.violations[1:]]
        return []


class InvalidArgumentError(BrokerError):
    """The request was malformed; nothing changed."""

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """Each offending field with what is wrong with it."""
        return [
            (violation.field, violation.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for violation in detail.field_violations
        ]


class NotFoundError(BrokerError):
    """No such kind, resource or lease."""


class AlreadyExistsError(BrokerError):
    """The name is taken."""


class PermissionDeniedError(BrokerError):
    """The caller does not hold the lease it acted on (wrong or missing secret)."""


class UnauthenticatedError(BrokerError):
    """The call carried no credential."""


class FailedPreconditionError(BrokerError):
    """The request can never succeed as things stand: an unsatisfiable
    requirement, a lease that already ended, a resource still held."""

    @property
    def violations(self) -> list[tuple[str, str, str]]:
        """Each failed precondition as (type, subject, description)."""
        return [
            (violation.type, violation.subject, violation.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.PreconditionFailure)
            for violation in detail.violations
        ]


# The broker's names for why a lease ended, by its state.
ENDED_LEASE_REASONS: dict[int, str] = {
    lease_pb2.LEASE_STATE_RELEASED: "LEASE_RELEASED",
    lease_pb2.LEASE_STATE_EXPIRED: "LEASE_EXPIRED",
    lease_pb2.LEASE_STATE_REVOKED: "LEASE_REVOKED",
}


class LeaseNotActiveError(FailedPreconditionError):
    """The broker returned a lease that is not active (released, expired or
    revoked) where an active one was due: it holds nothing. `lease` is the
    lease returned; its state is also the violation's type, as the broker
    names it (`LEASE_RELEASED`, ...)."""

    def __init__(self, lease: lease_pb2.Lease) -> None:
        known = lease.state in lease_pb2.LeaseState.values()
        state = lease_pb2.LeaseState.Name(lease.state) if known else f"state {lease.state}"
        kind = ENDED_LEASE_REASONS.get(lease.state, "LEASE_NOT_ACTIVE")
        reason = lease.end_reason or "no reason given"
        message = f"lease {lease.lease_id} is {state}, not active ({reason}): it holds nothing"
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=kind, subject=f"leases/{lease.lease_id}", description=message
        )
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            message,
            [error_details_pb2.PreconditionFailure(violations=[violation])],
        )
        self.lease = lease


class ResourceBusyError(BrokerError):
    """The resources exist but others hold them now; retrying later may work."""

    @property
    def blocked(self) -> lease_pb2.AcquireBlocked | None:
        """Which requirement is blocked, who holds what it could use, and
        why each resource is not granted (`blocked.obstacles`)."""
        return next((d for d in self.details if isinstance(d, lease_pb2.AcquireBlocked)), None)


class AbortedError(BrokerError):
    """A concurrent change won (a stale etag); read again and retry."""


class UnavailableError(BrokerError):
    """The broker cannot be reached or is shutting down; transient."""


class DeadlineExceededError(BrokerError):
    """The call's deadline passed before the broker answered."""


class OutOfRangeError(BrokerError):
    """A position given lies outside what the broker keeps (an event cursor
    older than its retention); the message names the oldest kept."""


class InternalError(BrokerError):
    """The broker failed; its log has the request id."""


ERRORS_BY_CODE: dict[grpc.StatusCode, type[BrokerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceBusyError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
}


def from_rpc_error(error: grpc.RpcError) -> BrokerError:
    """The `BrokerError` for a failed call (a `grpc.RpcError` that is also a
    `grpc.Call`, as the stubs raise); codes missing from the table (UNKNOWN,
    CANCELLED, ...) give a plain `BrokerError`."""
    code = error.code()
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        # The status proto disagrees with the call's code or message: a broken
        # peer; the call's own code and message are what we trust.
        status = None
    details = [] if status is None else [_unpack(detail) for detail in status.details]
    return ERRORS_BY_CODE.get(code, BrokerError)(code, error.details() or "", details)


def _unpack(detail: any_pb2.Any) -> Message:
    for detail_type in DETAIL_TYPES:
        # types-protobuf widens a message class's DESCRIPTOR beyond what `Is` takes.
        if detail.Is(detail_type.DESCRIPTOR):  # type: ignore[arg-type]
            unpacked = detail_type()
            detail.Unpack(unpacked)
            return unpacked
    return detail


def active(lease: lease_pb2.Lease) -> lease_pb2.Lease:
    """`lease` if it is active; else `LeaseNotActiveError`, naming its state
    and why it ended."""
    if lease.state != lease_pb2.LEASE_STATE_ACTIVE:
        raise LeaseNotActiveError(lease)
    return lease


def reason_of(error: BrokerError) -> str:
    """The broker's reason for `error` (`ErrorInfo.reason`, else the first
    precondition violation's type); empty if it gave none."""
    for detail in error.details:
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return detail.reason
    for detail in error.details:
        if isinstance(detail, error_details_pb2.PreconditionFailure) and detail.violations:
            return detail.violations[0].type
    return ""
