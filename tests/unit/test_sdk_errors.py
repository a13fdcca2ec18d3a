"""`sdk.errors.from_rpc_error`: every status code to its exception, with the
`google.rpc` details unpacked from a real `grpc.Status`; and the SDK's own
`LeaseNotActiveError` for a lease returned that has ended."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker.v1 import lease_pb2
from sdk import errors


class StatusError(grpc.RpcError):
    """What a stub raises, reduced to the three calls the mapping reads; only
    the mapping is under test, so a real server is not needed."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> tuple:
        return self._status.trailing_metadata


def rpc_error(code: grpc.StatusCode, message: str, *details) -> StatusError:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return StatusError(rpc_status.to_status(status))


@pytest.mark.parametrize(("code", "error_type"), list(errors.ERRORS_BY_CODE.items()))
def test_each_code_maps_to_its_error(code: grpc.StatusCode, error_type) -> None:
    error = errors.from_rpc_error(rpc_error(code, "it went wrong"))
    assert type(error) is error_type
    assert isinstance(error, errors.BrokerError)
    assert error.code is code
    assert error.message == "it went wrong"
    assert str(error) == f"{code.name}: it went wrong"
    assert error.details == []


def test_every_error_class_has_a_row() -> None:
    classes = {cls for cls in vars(errors).values() if isinstance(cls, type)}
    subclasses = {cls for cls in classes if issubclass(cls, errors.BrokerError)}
    # LeaseNotActiveError is raised by the SDK itself, never mapped from a code.
    own = {errors.BrokerError, errors.LeaseNotActiveError}
    assert subclasses - own == set(errors.ERRORS_BY_CODE.values())


def test_code_outside_the_table_is_a_plain_broker_error() -> None:
    error = errors.from_rpc_error(rpc_error(grpc.StatusCode.UNIMPLEMENTED, "no such method"))
    assert type(error) is errors.BrokerError
    assert error.code is grpc.StatusCode.UNIMPLEMENTED


def test_error_without_rich_status() -> None:
    plain = StatusError(
        rpc_status.to_status(status_pb2.Status(code=code_pb2.UNAVAILABLE, message="down"))
    )
    plain._status = plain._status._replace(trailing_metadata=())
    error = errors.from_rpc_error(plain)
    assert type(error) is errors.UnavailableError
    assert error.message == "down"
    assert error.details == []


def test_field_violations() -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="resource.fields.port", description="must be an integer"
            ),
            error_details_pb2.BadRequest.FieldViolation(
                field="resource.name", description="is required"
            ),
        ]
    )
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad resource", bad_request)
    )
    assert isinstance(error, errors.InvalidArgumentError)
    assert error.details == [bad_request]
    assert error.field_violations == [
        ("resource.fields.port", "must be an integer"),
        ("resource.name", "is required"),
    ]


def test_precondition_violations() -> None:
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type="NO_MATCH", subject="requirements[0]", description="no usable Calculator"
            )
        ]
    )
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "cannot be satisfied", failure)
    )
    assert isinstance(error, errors.FailedPreconditionError)
    assert error.violations == [("NO_MATCH", "requirements[0]", "no usable Calculator")]


def test_acquire_blocked() -> None:
    blocked = lease_pb2.AcquireBlocked(
        requirement_index=0,
        label="calc",
        kind="Calculator",
        holders=[
            lease_pb2.Holder(
                resource="calc",
                lease_id="L1",
                holder="alice@bench",
                expire_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
            )
        ],
    )
    info = error_details_pb2.ErrorInfo(reason="HELD", domain="broker")
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "calc is held", info, blocked)
    )
    assert isinstance(error, errors.ResourceBusyError)
    assert error.blocked == blocked
    assert error.details == [info, blocked]


def test_busy_without_detail() -> None:
    error = errors.from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "held"))
    assert isinstance(error, errors.ResourceBusyError)
    assert error.blocked is None


def test_resource_info_and_unknown_details() -> None:
    info = error_details_pb2.ResourceInfo(resource_type="Resource", resource_name="calc")
    unknown = error_details_pb2.Help(
        links=[error_details_pb2.Help.Link(description="docs", url="https://example.com")]
    )
    error = errors.from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "no calc", info, unknown))
    assert isinstance(error, errors.NotFoundError)
    assert error.details[0] == info
    assert isinstance(error.details[1], any_pb2.Any)
    assert error.details[1].Is(error_details_pb2.Help.DESCRIPTOR)


def test_inconsistent_status_keeps_the_calls_code() -> None:
    status = rpc_status.to_status(status_pb2.Status(code=code_pb2.NOT_FOUND, message="no calc"))
    lying = StatusError(status._replace(code=grpc.StatusCode.INTERNAL))
    error = errors.from_rpc_error(lying)
    assert type(error) is errors.InternalError
    assert error.details == []


# ------------------------------------------------------ leases not active


def ended_lease(state: int, end_reason: str = "") -> lease_pb2.Lease:
    return lease_pb2.Lease(lease_id="L1", state=state, end_reason=end_reason)


def test_an_active_lease_passes() -> None:
    lease = ended_lease(lease_pb2.LEASE_STATE_ACTIVE)
    assert errors.active(lease) is lease


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (lease_pb2.LEASE_STATE_RELEASED, "LEASE_RELEASED"),
        (lease_pb2.LEASE_STATE_EXPIRED, "LEASE_EXPIRED"),
        (lease_pb2.LEASE_STATE_REVOKED, "LEASE_REVOKED"),
        (lease_pb2.LEASE_STATE_UNSPECIFIED, "LEASE_NOT_ACTIVE"),
    ],
)
def test_a_lease_not_active_raises_naming_its_state_and_end_reason(state, reason) -> None:
    lease = ended_lease(state, "released by its holder")

    with pytest.raises(errors.LeaseNotActiveError) as raised:
        errors.active(lease)

    error = raised.value
    assert isinstance(error, errors.FailedPreconditionError)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.lease is lease
    assert lease_pb2.LeaseState.Name(state) in error.message
    assert "released by its holder" in error.message
    assert error.violations == [(reason, "leases/L1", error.message)]
    assert errors.reason_of(error) == reason


def test_a_lease_in_an_unknown_state_is_not_active() -> None:
    with pytest.raises(errors.LeaseNotActiveError, match="state 99"):
        errors.active(ended_lease(99))


def test_the_reason_of_an_error_is_its_error_info_first() -> None:
    failure = error_details_pb2.PreconditionFailure(
        violations=[error_details_pb2.PreconditionFailure.Violation(type="FIRST")]
    )
    info = error_details_pb2.ErrorInfo(reason="LEASE_RELEASED", domain="broker")
    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "ended", failure, info)
    )
    assert errors.reason_of(error) == "LEASE_RELEASED"
    assert errors.reason_of(errors.BrokerError(grpc.StatusCode.UNKNOWN, "bare")) == ""


def test_reasons_of_a_refusal_are_the_violations_after_the_first() -> None:
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type="UNSATISFIABLE", subject="requirements[0]", description="never: calc is out"
            ),
            error_details_pb2.PreconditionFailure.Violation(
                type="OUT_OF_SERVICE", subject="resources/calc", description="calc is out"
            ),
        ]
    )

    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "never: calc is out", failure)
    )

    assert error.reasons == ["calc is out"]
    assert "calc is out" in str(error)


def test_reasons_of_a_busy_request_are_its_obstacles() -> None:
    blocked = lease_pb2.AcquireBlocked(
        kind="Calculator",
        obstacles=[
            lease_pb2.Obstacle(
                resource="calc",
                cause=lease_pb2.OBSTACLE_CAUSE_RESERVED,
                text="calc is reserved for bob",
                principal="bob",
            )
        ],
    )

    error = errors.from_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "cannot now", blocked)
    )

    assert error.reasons == ["calc is reserved for bob"]
    assert errors.from_rpc_error(rpc_error(grpc.StatusCode.INTERNAL, "x")).reasons == []
