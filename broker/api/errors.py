"""THE table from domain errors to gRPC status codes and `google.rpc` details,
and the interceptor that applies it (with request validation and the database
connection) around every RPC.

Anything not in the table is INTERNAL: logged with an id that the caller also
gets, never a traceback on the wire, never a dead server.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import grpc
import peewee
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker.api import validation
from broker.api.convert import blocked_to_proto
from broker.domain import errors
from broker.domain.values import Blocked

log = logging.getLogger(__name__)

ERROR_DOMAIN = "broker.rotest.dev"


def _bad_request(error: errors.InvalidArgumentError):
    return [
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
    ]


def _resource_info(error: errors.NotFoundError | errors.AlreadyExistsError):
    return [
        error_details_pb2.ResourceInfo(
            resource_type=error.resource_type,
            resource_name=error.resource_name,
            description=error.message,
        )
    ]


def _error_info(reason: str):
    def build(error: errors.BrokerError):
        return [
            error_details_pb2.ErrorInfo(
                reason=getattr(error, "reason", reason), domain=ERROR_DOMAIN
            )
        ]

    return build


def _precondition_failure(error: errors.FailedPreconditionError):
    return [
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in error.violations
            ]
        ),
        error_details_pb2.ErrorInfo(reason=error.violations[0].type, domain=ERROR_DOMAIN),
    ]


def _acquire_blocked(error: errors.ResourceBusyError):
    blocked = Blocked(error.requirement_index, error.label, error.kind, tuple(error.holders))
    return [
        blocked_to_proto(blocked),
        error_details_pb2.ErrorInfo(reason="RESOURCES_BUSY", domain=ERROR_DOMAIN),
    ]


def _none(error: Exception):
    return []


# Most specific class first: the first row whose class matches wins.
STATUS_TABLE: tuple[tuple[type[Exception], int, Callable[[Exception], list]], ...] = (
    (errors.InvalidArgumentError, code_pb2.INVALID_ARGUMENT, _bad_request),
    (errors.NotFoundError, code_pb2.NOT_FOUND, _resource_info),
    (errors.AlreadyExistsError, code_pb2.ALREADY_EXISTS, _resource_info),
    (errors.PermissionDeniedError, code_pb2.PERMISSION_DENIED, _error_info("NOT_HOLDER")),
    (errors.FailedPreconditionError, code_pb2.FAILED_PRECONDITION, _precondition_failure),
    (errors.ResourceBusyError, code_pb2.RESOURCE_EXHAUSTED, _acquire_blocked),
    (errors.DeadlineExceededError, code_pb2.DEADLINE_EXCEEDED, _none),
    (errors.ConflictError, code_pb2.ABORTED, _error_info("CONFLICT")),
    (errors.UnavailableError, code_pb2.UNAVAILABLE, _none),
    # The database refusing work (unreachable, locked past the busy timeout) is
    # transient: the caller may retry.
    (peewee.OperationalError, code_pb2.UNAVAILABLE, _none),
    (peewee.InterfaceError, code_pb2.UNAVAILABLE, _none),
)


def status_of(error: Exception) -> status_pb2.Status | None:
    """The status for a known error, None for anything unexpected."""
    for cls, code, details in STATUS_TABLE:
        if isinstance(error, cls):
            message = (
                error.message
                if isinstance(error, errors.BrokerError)
                else (f"the database is unavailable: {error}")
            )
            packed = []
            for detail in details(error):
                holder = any_pb2.Any()
                holder.Pack(detail)
                packed.append(holder)
            return status_pb2.Status(code=code, message=message, details=packed)
    return None


def _status_for(error: Exception, rpc: str) -> status_pb2.Status:
    status = status_of(error)
    if status is None:
        incident = uuid.uuid4().hex[:12]
        log.exception("internal error %s in %s", incident, rpc)
        return status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"internal error (incident {incident})"
        )
    if status.code == code_pb2.UNAVAILABLE:
        log.warning("unavailable: %s", status.message)
    return status


def guarded(behavior: Callable, rpc: str) -> Callable:
    """Wraps one unary RPC (a coroutine): validate the request, run it, and
    turn errors into statuses."""

    async def handle(request, context: grpc.aio.ServicerContext):
        try:
            validation.check(request)
            return await behavior(request, context)
        except Exception as error:
            status = _status_for(error, rpc)
        await context.abort_with_status(rpc_status.to_status(status))

    return handle


def guarded_stream(behavior: Callable, rpc: str) -> Callable:
    """Wraps one streaming RPC (an async generator) the same way; a request
    stream's messages are the servicer's to validate."""

    async def handle(request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, Message):
                validation.check(request)
            async for response in behavior(request, context):
                yield response
            return
        except Exception as error:
            status = _status_for(error, rpc)
        await context.abort_with_status(rpc_status.to_status(status))

    return handle


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Applies `guarded` to every method of the broker's services (health and
    reflection pass through untouched)."""

    def __init__(self, prefixes: tuple[str, ...] = ("/broker.v1.",)):
        self.prefixes = prefixes

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefixes):
            return handler
        rpc = handler_call_details.method
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(guarded(handler.unary_unary, rpc), **codecs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guarded_stream(handler.unary_stream, rpc), **codecs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                guarded_stream(handler.stream_stream, rpc), **codecs
            )
        return handler
