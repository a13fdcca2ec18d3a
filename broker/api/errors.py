"""THE table from domain errors to gRPC status codes and `google.rpc` details,
and the interceptor that applies it (with request validation) around every RPC.

Anything not in the table is INTERNAL: logged with an id that the caller also
gets, never a traceback on the wire, never a dead server. Bytes that do not
decode as the method's request are INVALID_ARGUMENT, for unary and streaming
methods alike, and are logged at most once a minute with a count.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import peewee
from google.protobuf import any_pb2, descriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker.api import identity, validation
from broker.api.convert import blocked_to_proto
from broker.api.limits import CallLimit
from broker.domain import errors
from broker.domain.values import Blocked, Principal

log = logging.getLogger(__name__)

ERROR_DOMAIN = "broker.rotest.dev"

# An error travels in the response's trailing metadata, which a client takes
# up to 8 KiB by default (the message twice: as text and inside the details):
# whatever an error quotes, its message and details are cut to fit.
MAX_MESSAGE_BYTES = 512
MAX_DETAILS_BYTES = 2048
# Entries kept of each list of a detail that had to be cut.
MAX_DETAIL_ITEMS = 8

# Threads that check requests, off the event loop.
VALIDATION_WORKERS = 2
# A request this small is checked on the event loop, in microseconds: a trip
# to a checking thread and back would cost more than the check.
INLINE_CHECK_BYTES = 4096
# The least time between two log lines about undecodable requests.
UNDECODABLE_LOG_INTERVAL = 60.0


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
    blocked = Blocked(
        error.requirement_index,
        error.label,
        error.kind,
        tuple(error.holders),
        tuple(error.obstacles),
    )
    return [
        blocked_to_proto(blocked),
        error_details_pb2.ErrorInfo(reason="RESOURCES_BUSY", domain=ERROR_DOMAIN),
    ]


def _quota_failure(error: errors.LimitExceededError):
    return [
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=error.limit, description=error.message
                )
            ]
        ),
        error_details_pb2.ErrorInfo(reason="LIMIT_EXCEEDED", domain=ERROR_DOMAIN),
    ]


def _principal_quota(error: errors.QuotaExceededError):
    return [
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"principals/{error.principal}", description=error.message
                )
            ]
        ),
        error_details_pb2.ErrorInfo(
            reason="QUOTA_EXCEEDED",
            domain=ERROR_DOMAIN,
            metadata={
                "principal": error.principal,
                "limit": str(error.limit),
                "held": str(error.held),
                "needed": str(error.needed),
            },
        ),
    ]


def _none(error: Exception):
    return []


# Most specific class first: the first row whose class matches wins. Each
# row's details function takes an instance of that row's class.
STATUS_TABLE: tuple[tuple[type[Exception], int, Callable[[Any], list]], ...] = (
    (errors.InvalidArgumentError, code_pb2.INVALID_ARGUMENT, _bad_request),
    (errors.NotFoundError, code_pb2.NOT_FOUND, _resource_info),
    (errors.AlreadyExistsError, code_pb2.ALREADY_EXISTS, _resource_info),
    (errors.UnauthenticatedError, code_pb2.UNAUTHENTICATED, _error_info("NO_CREDENTIAL")),
    (errors.PermissionDeniedError, code_pb2.PERMISSION_DENIED, _error_info("NOT_HOLDER")),
    (errors.FailedPreconditionError, code_pb2.FAILED_PRECONDITION, _precondition_failure),
    (errors.ResourceBusyError, code_pb2.RESOURCE_EXHAUSTED, _acquire_blocked),
    (errors.QuotaExceededError, code_pb2.RESOURCE_EXHAUSTED, _principal_quota),
    (errors.LimitExceededError, code_pb2.RESOURCE_EXHAUSTED, _quota_failure),
    (errors.DeadlineExceededError, code_pb2.DEADLINE_EXCEEDED, _none),
    (errors.ConflictError, code_pb2.ABORTED, _error_info("CONFLICT")),
    (errors.UnavailableError, code_pb2.UNAVAILABLE, _none),
    (errors.OutOfRangeError, code_pb2.OUT_OF_RANGE, _none),
    # The database refusing work (unreachable, locked past the busy timeout) is
    # transient: the caller may retry.
    (peewee.OperationalError, code_pb2.UNAVAILABLE, _none),
    (peewee.InterfaceError, code_pb2.UNAVAILABLE, _none),
)


def status_of(error: Exception) -> status_pb2.Status | None:
    """The status for a known error, None for anything unexpected; its
    message and details cut to fit in trailing metadata."""
    for cls, code, details in STATUS_TABLE:
        if isinstance(error, cls):
            message = (
                error.message
                if isinstance(error, errors.BrokerError)
                else (f"the database is unavailable: {error}")
            )
            packed = []
            room = MAX_DETAILS_BYTES
            for detail in details(error):
                holder = _packed(detail)
                if holder.ByteSize() > room:
                    _shorten(detail)
                    holder = _packed(detail)
                if holder.ByteSize() <= room:
                    room -= holder.ByteSize()
                    packed.append(holder)
            return status_pb2.Status(
                code=code, message=_clip_bytes(message, MAX_MESSAGE_BYTES), details=packed
            )
    return None


def _packed(detail: Message) -> any_pb2.Any:
    holder = any_pb2.Any()
    holder.Pack(detail)
    return holder


def _clip_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, ending with "…" if cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - len("…".encode())].decode(errors="ignore") + "…"


def _shorten(message: Message) -> None:
    """Cuts every text of a detail to a short prefix and every list to its
    first entries, in place."""
    for field, value in message.ListFields():
        if field.type == descriptor.FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                value[:] = [errors.clip(item) for item in value[:MAX_DETAIL_ITEMS]]
            else:
                setattr(message, field.name, errors.clip(value))
        elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                del value[MAX_DETAIL_ITEMS:]
                for item in value:
                    _shorten(item)
            else:
                _shorten(value)


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


Check = Callable[[object], Awaitable[None]]
"""Checks one request message (or `Undecodable`), raising INVALID_ARGUMENT."""

Gate = Callable[[str, Any, Any], Awaitable[Principal]]
"""Admits a call to a method (`broker.api.auth`): its principal, from the
call's metadata and its TLS peer, or UNAUTHENTICATED / PERMISSION_DENIED."""


async def _admit(gate: Gate | None, rpc: str, context: grpc.aio.ServicerContext) -> None:
    """Makes the call's verified principal the one its servicer sees."""
    if gate is not None:
        principal = await gate(rpc, context.invocation_metadata(), context.auth_context())
        identity.current.set(principal)


def guarded(
    behavior: Callable,
    rpc: str,
    check: Check,
    limit: CallLimit,
    streamed: bool = False,
    gate: Gate | None = None,
) -> Callable:
    """Wraps one RPC with a single response (a coroutine): take its place
    within the call limit, admit the caller (`gate`), check the request
    (each message of it, `streamed`, as the servicer reads it), run it, and
    turn errors into statuses."""

    async def handle(request, context: grpc.aio.ServicerContext):
        try:
            limit.enter()
            try:
                await _admit(gate, rpc, context)
                if streamed:
                    request = _checked_stream(request, check)
                else:
                    await check(request)
                return await behavior(request, context)
            finally:
                limit.leave()
        except Exception as error:
            status = _status_for(error, rpc)
        await context.abort_with_status(rpc_status.to_status(status))

    return handle


def guarded_stream(
    behavior: Callable,
    rpc: str,
    check: Check,
    limit: CallLimit,
    streamed: bool = False,
    gate: Gate | None = None,
) -> Callable:
    """Wraps one RPC with a stream of responses (an async generator) the
    same way."""

    async def handle(request, context: grpc.aio.ServicerContext):
        try:
            limit.enter()
            try:
                await _admit(gate, rpc, context)
                if streamed:
                    request = _checked_stream(request, check)
                else:
                    await check(request)
                async for response in behavior(request, context):
                    yield response
                return
            finally:
                limit.leave()
        except Exception as error:
            status = _status_for(error, rpc)
        await context.abort_with_status(rpc_status.to_status(status))

    return handle


async def _checked_stream(requests: AsyncIterator, check: Check) -> AsyncIterator:
    async for request in requests:
        await check(request)
        yield request


class Undecodable:
    """What a method's request deserializer gives for bytes that are not a
    request of its type, so that the call, not gRPC, answers them."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str):
        self.type_name = type_name

    def error(self) -> errors.InvalidArgumentError:
        return errors.InvalidArgumentError.of(
            "", f"the request could not be decoded: its bytes are not a {self.type_name}"
        )


class Throttled:
    """Logs a recurring event at most once per `interval`, counting the
    events in between, so a flood of them cannot flood the log."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._last: float | None = None

    def note(self, rpc: str) -> None:
        now = self.clock()
        with self._lock:
            self._count += 1
            if self._last is not None and now - self._last < self.interval:
                return
            count, self._count, self._last = self._count, 0, now
        log.warning(
            "refused %d undecodable request(s) since the last report, the latest to %s "
            "(reported at most once every %g s)",
            count,
            rpc,
            self.interval,
        )


def _decoding(deserializer: Callable | None, rpc: str, undecodable: Throttled) -> Callable | None:
    """`deserializer`, giving `Undecodable` for bytes it cannot decode."""
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = message_type.full_name if message_type is not None else "request of this method"

    def decode(raw: bytes):
        try:
            return deserializer(raw)
        except (DecodeError, RecursionError):
            undecodable.note(rpc)
            return Undecodable(type_name)

    return decode


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Applies `guarded` to every method of the broker's services (health and
    reflection pass through untouched, needing no credential). `gate`, with
    authentication on, admits each call before anything else looks at it.
    Requests larger than `INLINE_CHECK_BYTES` are checked on threads of its
    own, never on the event loop: checking a large request takes long.
    `close()` stops those threads."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("/broker.v1.",),
        workers: int = VALIDATION_WORKERS,
        undecodable: Throttled | None = None,
        max_calls: int = 4096,
        gate: Gate | None = None,
    ):
        self.prefixes = prefixes
        self.gate = gate
        self.limit = CallLimit(max_calls)
        # Each method's wrapped handler, made once: a waiting call then holds
        # no wrapper of its own.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validation")
        self.undecodable = undecodable or Throttled(UNDECODABLE_LOG_INTERVAL)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def check(self, request) -> None:
        if isinstance(request, Undecodable):
            raise request.error()
        if request.ByteSize() <= INLINE_CHECK_BYTES:
            validation.check(request)
            return
        await asyncio.get_running_loop().run_in_executor(self._pool, validation.check, request)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefixes):
            return handler
        rpc = handler_call_details.method
        cached = self._wrapped.get(rpc)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[rpc] = (handler, self._wrap(handler, rpc))
        return cached[1]

    def _wrap(self, handler, rpc: str):
        codecs = {
            "request_deserializer": _decoding(handler.request_deserializer, rpc, self.undecodable),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guarded(handler.unary_unary, rpc, self.check, self.limit, gate=self.gate),
                **codecs,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guarded_stream(handler.unary_stream, rpc, self.check, self.limit, gate=self.gate),
                **codecs,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                guarded(handler.stream_unary, rpc, self.check, self.limit, True, self.gate),
                **codecs,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                guarded_stream(handler.stream_stream, rpc, self.check, self.limit, True, self.gate),
                **codecs,
            )
        return handler
