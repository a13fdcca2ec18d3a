"""The contract over HTTP/JSON: every method whose `.proto` declares a
`google.api.http` rule is served at that verb and path, with the proto JSON
mapping for bodies and answers.

A request is translated, then sent over gRPC to this same broker (through
a private Unix socket), so it meets exactly what a gRPC caller meets: the
same authentication (`Authorization: Bearer` travels as metadata), role
table, validation and error table. A refusal comes back as its
`google.rpc.Status`, details included, with the HTTP status of its code.
Server-streaming methods answer newline-delimited JSON, one
`{"result": ...}` per message, ending with `{"error": ...}` if it fails.

Browsers are kept out of it: a body must come as `application/json`, which
a page of another site cannot send without the CORS preflight this site
never grants; and with authentication off (so on loopback only), a `Host`
that is not a loopback name (a DNS-rebinding page) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from aiohttp import web
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, json_format, message_factory
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from broker.api.contract import SERVICE_MODULES
from broker.api.exposure import is_loopback
from broker.api.identity import HOLDER_METADATA

STATUS_DETAILS_METADATA = "grpc-status-details-bin"
JSON = "application/json"
NDJSON = "application/x-ndjson"

# google.rpc.Code -> HTTP status, as googleapis and grpc-gateway map them.
HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)\}")
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


class BadInput(ValueError):
    """An HTTP request that does not translate into the method's request:
    INVALID_ARGUMENT, naming the field."""

    def __init__(self, field: str, description: str):
        super().__init__(f"{field}: {description}" if field else description)
        self.field = field
        self.description = description


@dataclasses.dataclass(frozen=True)
class Route:
    """One method's HTTP rule."""

    verb: str
    path: str  # as the rule gives it, e.g. /v1/leases/{lease_id}:renew
    body: str  # "" (none), "*" (the whole request) or a field's name
    method: descriptor.MethodDescriptor

    @property
    def rpc(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def variables(self) -> list[str]:
        return _VARIABLE.findall(self.path)

    @property
    def pattern(self) -> str:
        """The aiohttp path: each `{a.b}` variable as `{a__b}`, taking any
        characters but `/`."""
        return _VARIABLE.sub(lambda m: f"{{{_key(m.group(1))}:[^/]+?}}", self.path)


def _key(variable: str) -> str:
    """A path variable's aiohttp name (`resource.name` -> `resource__name`)."""
    return variable.replace(".", "__")


def routes(modules: Iterable[Any] = SERVICE_MODULES) -> list[Route]:
    """The HTTP rules the contract declares, in declaration order."""
    found = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb is None or verb == "custom":
                    continue
                found.append(Route(verb.upper(), getattr(rule, verb), rule.body, method))
    return found


def status_of_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The call's `google.rpc.Status`: the one the broker sent in the
    trailers, else one made of its code and message."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_METADATA and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def bad_input_status(error: BadInput) -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(error))
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field, description=error.description
                )
            ]
        )
    )
    return status


def status_response(status: status_pb2.Status, http_status: int | None = None) -> web.Response:
    """The error answer: the Status as JSON, with its code's HTTP status."""
    code = http_status or HTTP_STATUS.get(status.code, 500)
    headers = {"WWW-Authenticate": 'Bearer realm="broker"'} if code == 401 else None
    return web.Response(status=code, text=_json(status) + "\n", content_type=JSON, headers=headers)


def error_response(code: int, message: str, http_status: int | None = None) -> web.Response:
    return status_response(status_pb2.Status(code=code, message=message), http_status)


def _json(message: Message) -> str:
    return json.dumps(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
        ensure_ascii=False,
    )


def _field(message: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    """A field by its proto name or its JSON name."""
    field = message.fields_by_name.get(name)
    if field is None:
        field = next((f for f in message.fields if f.json_name == name), None)
    return field


def _set_path(into: dict, message: descriptor.Descriptor, path: str, value: Any) -> None:
    """Puts `value` at the dotted field path `path` of the JSON dict `into`,
    converted for the field's type; a repeated field gathers values."""
    *parents, last = path.split(".")
    target, where = into, message
    for index, name in enumerate(parents):
        field = _field(where, name)
        if field is None or field.message_type is None or field.is_repeated:
            raise BadInput(".".join(parents[: index + 1]), "is not a field that holds fields")
        target = target.setdefault(field.json_name, {})
        where = field.message_type
    field = _field(where, last)
    if field is None:
        raise BadInput(path, f"{where.name} has no such field")
    converted = _scalar(path, field, value)
    if field.is_repeated:
        target.setdefault(field.json_name, []).append(converted)
    elif field.json_name in target:
        raise BadInput(path, "is given twice")
    else:
        target[field.json_name] = converted


def _scalar(path: str, field: descriptor.FieldDescriptor, value: str) -> Any:
    if field.type == field.TYPE_BOOL:
        if value.lower() not in _BOOLS:
            raise BadInput(path, f"{value!r} is not true or false")
        return _BOOLS[value.lower()]
    if field.message_type is not None and field.message_type.full_name not in _FROM_STRING:
        raise BadInput(path, "takes a JSON object: send it in the body")
    # Numbers, enum names, durations, timestamps and field masks all parse
    # from their JSON strings.
    return value


# Messages whose JSON form is a string, so a query parameter can carry them.
_FROM_STRING = {
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.FieldMask",
}


def build_request(
    route: Route, body: bytes, query: Mapping[str, str] | Iterable[tuple[str, str]], path: Mapping
) -> Message:
    """The method's request from the HTTP request: the body where the rule
    puts it, then query parameters and path variables (which win nothing:
    a field given two ways is refused)."""
    request_type = message_factory.GetMessageClass(route.method.input_type)
    fields: dict[str, Any] = {}
    if route.body:
        parsed = _parse_body(body)
        if route.body == "*":
            fields = parsed
        else:
            field = _field(route.method.input_type, route.body)
            assert field is not None, route.body
            fields = {field.json_name: parsed}
    elif body.strip():
        raise BadInput("", f"{route.verb} {route.path} takes no body: use query parameters")
    if route.body != "*":
        items = query.items() if isinstance(query, Mapping) else query
        for key, value in items:
            _set_path(fields, route.method.input_type, key, value)
    for variable in route.variables:
        value = path[_key(variable)]
        _put_variable(fields, route.method.input_type, variable, value)
    request = request_type()
    try:
        json_format.ParseDict(fields, request)
    except json_format.ParseError as error:
        raise BadInput("", _parse_message(str(error))) from None
    return request


def _put_variable(into: dict, message: descriptor.Descriptor, path: str, value: str) -> None:
    *parents, last = path.split(".")
    target, where = into, message
    for name in parents:
        field = _field(where, name)
        assert field is not None and field.message_type is not None, path
        nested = target.setdefault(field.json_name, {})
        if not isinstance(nested, dict):
            raise BadInput(name, "is not a JSON object")
        target, where = nested, field.message_type
    field = _field(where, last)
    assert field is not None, path
    given = target.get(field.json_name, target.get(field.name))
    if given not in (None, value):
        raise BadInput(path, f"is {value!r} in the path and {given!r} in the body")
    target.pop(field.name, None)
    target[field.json_name] = value


def _parse_body(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput("", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise BadInput("", f"the body is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise BadInput("", "the body must be a JSON object")
    return parsed


def _parse_message(text: str) -> str:
    """json_format's message, on one line and without its nesting."""
    first = text.strip().splitlines()[0] if text.strip() else "cannot read the request"
    while first.startswith("Failed to parse ") and ": " in first:
        first = first.split(": ", 1)[1]
    return first.rstrip(".")


class Gateway:
    """The HTTP/JSON routes, calling the broker through `channel`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        loopback_only: bool,
        declared: list[Route] | None = None,
    ):
        self._channel = channel
        self._loopback_only = loopback_only
        self.routes = routes() if declared is None else declared

    def add_to(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.verb, route.pattern, self._handler(route))

    def _handler(self, route: Route):
        output = message_factory.GetMessageClass(route.method.output_type)
        coding: dict[str, Any] = {
            "request_serializer": lambda m: m.SerializeToString(),
            "response_deserializer": output.FromString,
        }
        stream = self._channel.unary_stream(route.rpc, **coding)
        unary = self._channel.unary_unary(route.rpc, **coding)

        async def handle(request: web.Request) -> web.StreamResponse:
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            try:
                message = build_request(
                    route, await request.read(), request.query, request.match_info
                )
            except BadInput as error:
                return status_response(bad_input_status(error))
            metadata = forwarded_metadata(request.headers)
            if route.streaming:
                return await _stream(request, stream(message, metadata=metadata))
            try:
                answer = await unary(message, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                return status_response(status_of_error(error))
            return web.Response(text=_json(answer) + "\n", content_type=JSON)

        return handle

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Why a request that could come from a browser page is refused."""
        if self._loopback_only and not is_loopback(request.host):
            return error_response(
                code_pb2.PERMISSION_DENIED,
                f"the Host {request.host!r} is not a loopback name, and this broker has "
                "authentication off: call it as 127.0.0.1 or localhost",
            )
        if request.method in ("POST", "PATCH", "PUT") and request.content_type != JSON:
            return error_response(
                code_pb2.INVALID_ARGUMENT,
                f"the body must be sent as Content-Type: {JSON}, not "
                f"{request.content_type!r} (curl --json '{{...}}')",
                415,
            )
        return None


def forwarded_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """What of the HTTP headers the broker reads: the credential and, with
    authentication off, the caller's name."""
    metadata = []
    if "Authorization" in headers:
        metadata.append(("authorization", headers["Authorization"]))
    if "X-Broker-Holder" in headers:
        metadata.append((HOLDER_METADATA, headers["X-Broker-Holder"]))
    return tuple(metadata)


async def _stream(request: web.Request, call) -> web.StreamResponse:
    """Newline-delimited JSON. The status is sent with the first message, so
    an error before any (a bad filter, say) still gets its HTTP status."""
    iterator = call.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except grpc.aio.AioRpcError as error:
        return status_response(status_of_error(error))
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(_line("result", first))
            async for message in iterator:
                await response.write(_line("result", message))
    except grpc.aio.AioRpcError as error:
        await response.write(_line("error", status_of_error(error)))
    finally:
        call.cancel()
    await response.write_eof()
    return response


def _line(key: str, message: Message) -> bytes:
    return ("{" + json.dumps(key) + ": " + _json(message) + "}\n").encode()
