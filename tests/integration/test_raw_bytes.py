"""Bytes that are not a request: every method of the broker's services, sent
undecodable bytes through a channel that does not serialize, answers
INVALID_ARGUMENT saying the request could not be decoded, keeps serving, and
logs such requests at most once a minute with a count, without a traceback.

The methods are read off the service descriptors, so a new method is covered
as soon as it exists.
"""

from __future__ import annotations

import logging
import random

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from broker.api.contract import SERVICE_NAMES
from broker.api.errors import Throttled
from broker.v1 import inventory_service_pb2 as inv
from broker.v1 import lease_service_pb2
from tests.conftest import RPC_TIMEOUT

# Every service the broker serves (health and reflection aside).
SERVICES = tuple(descriptor_pool.Default().FindServiceByName(name) for name in SERVICE_NAMES)
METHODS = [method for service in SERVICES for method in service.methods]

# Tag 0x07 is field 0 with wire type 7: neither exists, whatever follows.
RANDOM_BYTES = b"\x07" + random.Random(7).randbytes(255)
NESTED_GROUPS = b"\x0b" * 200_000  # field 1, start group, 200,000 deep
TRUNCATED_FIELD = b"\x12\x40abc"  # field 2, 64 bytes announced, 3 sent
PAYLOADS = {
    "random-bytes": RANDOM_BYTES,
    "200000-nested-groups": NESTED_GROUPS,
    "truncated-field": TRUNCATED_FIELD,
}


def path_of(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def response_type(method):
    return message_factory.GetMessageClass(method.output_type)


def call_raw(channel: grpc.Channel, method, payload: bytes) -> grpc.RpcError:
    """Sends `payload` as the request (the first of a request stream, after a
    good one for a bidirectional method) and returns the error it gets."""
    decode = response_type(method).FromString
    path = path_of(method)
    try:
        if method.client_streaming:
            stream = channel.stream_stream(
                path, request_serializer=None, response_deserializer=decode
            )
            for _ in stream(iter([payload]), timeout=RPC_TIMEOUT):
                pass
        elif method.server_streaming:
            stream = channel.unary_stream(
                path, request_serializer=None, response_deserializer=decode
            )
            for _ in stream(payload, timeout=RPC_TIMEOUT):
                pass
        else:
            channel.unary_unary(path, request_serializer=None, response_deserializer=decode)(
                payload, timeout=RPC_TIMEOUT
            )
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{path} accepted {payload[:16]!r}…")


def assert_serving(channel: grpc.Channel) -> None:
    call = channel.unary_unary(
        "/broker.v1.InventoryService/ListKinds",
        request_serializer=inv.ListKindsRequest.SerializeToString,
        response_deserializer=inv.ListKindsResponse.FromString,
    )
    assert call(inv.ListKindsRequest(), timeout=RPC_TIMEOUT).kinds


def test_the_services_have_methods_of_every_shape():
    assert len(METHODS) >= 15
    shapes = {(m.client_streaming, m.server_streaming) for m in METHODS}
    assert {(False, False), (False, True), (True, True)} <= shapes


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_the_payloads_do_not_decode_as_any_request(payload):
    for method in METHODS:
        with pytest.raises(DecodeError):
            message_factory.GetMessageClass(method.input_type).FromString(payload)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_undecodable_bytes_are_invalid_argument_on_every_method(channel, payload):
    for method in METHODS:
        error = call_raw(channel, method, payload)

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            path_of(method),
            error.code(),
            error.details(),
        )
        assert "could not be decoded" in error.details(), path_of(method)
        assert method.input_type.full_name in error.details()
    assert_serving(channel)


def test_undecodable_bytes_in_the_middle_of_a_session_stream_are_invalid_argument(channel):
    method = lease_service_pb2.DESCRIPTOR.services_by_name["LeaseService"].methods_by_name[
        "OpenSession"
    ]
    stream = channel.stream_stream(
        path_of(method),
        request_serializer=None,
        response_deserializer=response_type(method).FromString,
    )
    good = lease_service_pb2.OpenSessionRequest(holder="alice").SerializeToString()
    responses = stream(iter([good, good, TRUNCATED_FIELD, good]), timeout=RPC_TIMEOUT)

    assert next(responses).session_id
    assert next(responses).session_id
    with pytest.raises(grpc.RpcError) as error:
        next(responses)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert "could not be decoded" in error.value.details()
    assert_serving(channel)


BAD_CALLS = 20


def test_undecodable_requests_are_logged_once_with_a_count_and_no_traceback(
    broker, channel, caplog
):
    # A clock that stands still: every bad call falls within one interval.
    broker.interceptor.undecodable = Throttled(60.0, clock=lambda: 1000.0)
    method = METHODS[0]
    caplog.set_level(logging.DEBUG)

    for _ in range(BAD_CALLS):
        assert call_raw(channel, method, RANDOM_BYTES).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_serving(channel)

    reports = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]
    assert path_of(method) in reports[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
    assert "DecodeError" not in caplog.text
