"""The brokers a client may use, and the one it uses now.

A client given several brokers (`host:port,host:port`, brokers sharing one
database) keeps one channel per address, opened on first use, and sends
each call to the *current* broker: the first at the start, the next one
(in order, wrapping around) each time the current one fails to answer a
call. So a dead or frozen broker costs one failed try, and later calls go
straight to one that answers. `answers` asks a broker's health whether it
serves, for calls that must not be sent to a broker that might not answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import grpc
from google.protobuf import empty_pb2, wrappers_pb2

from broker.v1 import (
    access_service_pb2_grpc,
    event_service_pb2_grpc,
    inventory_service_pb2_grpc,
    lease_service_pb2_grpc,
)
from sdk import calls
from sdk.channel import TlsOptions, addresses_of, open_channel

logger = logging.getLogger(__name__)

# `grpc.health.v1.Health/Check` without the server's grpcio-health-checking
# package: the request asking about the whole server (`service` empty) is
# empty on the wire, as `Empty` is, and the answer's one field, its enum
# `status` (field 1, a varint), reads as `Int32Value.value`.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_SERVING = 1  # HealthCheckResponse.ServingStatus.SERVING


def health_check(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """The health check of the broker at the end of `channel`."""
    return channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=wrappers_pb2.Int32Value.FromString,
    )


@dataclasses.dataclass(frozen=True)
class Broker:
    """One broker's channel and stubs; `index` is its place in the list."""

    index: int
    address: str
    channel: grpc.Channel
    inventory: inventory_service_pb2_grpc.InventoryServiceStub
    leases: lease_service_pb2_grpc.LeaseServiceStub
    health: grpc.UnaryUnaryMultiCallable
    events: event_service_pb2_grpc.EventServiceStub
    access: access_service_pb2_grpc.AccessServiceStub

    def answers(self, timeout: float) -> bool:
        """Whether the broker answers its health check SERVING within
        `timeout` seconds: False if it cannot be reached, does not answer
        (frozen), or has lost its database."""
        future = self.health.future(empty_pb2.Empty(), timeout=timeout)
        try:
            response = calls.result(future)
        except grpc.RpcError:
            return False
        return response.value == HEALTH_SERVING


class Brokers:
    """The brokers at `address` (see `sdk.channel.addresses_of`); safe to
    use from several threads."""

    def __init__(self, address: str, token: str = "", tls: TlsOptions | None = None) -> None:
        self.addresses = addresses_of(address)
        self._token = token
        self._tls = tls
        self._open: dict[int, Broker] = {}
        self._current = 0
        self._closed = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.addresses)

    def current(self) -> Broker:
        """The broker to send the next call to, its channel opened if need be."""
        with self._lock:
            if self._closed:
                raise ValueError("the client is closed")
            index = self._current
            broker = self._open.get(index)
            if broker is None:
                channel = open_channel(self.addresses[index], self._token, self._tls)
                broker = Broker(
                    index,
                    self.addresses[index],
                    channel,
                    inventory_service_pb2_grpc.InventoryServiceStub(channel),
                    lease_service_pb2_grpc.LeaseServiceStub(channel),
                    health_check(channel),
                    event_service_pb2_grpc.EventServiceStub(channel),
                    access_service_pb2_grpc.AccessServiceStub(channel),
                )
                self._open[index] = broker
            return broker

    def failed(self, broker: Broker) -> None:
        """`broker` did not answer: the next broker becomes current, unless
        another thread already moved on from it."""
        with self._lock:
            if len(self.addresses) == 1 or self._current != broker.index:
                return
            self._current = (broker.index + 1) % len(self.addresses)
            logger.warning(
                "broker %s did not answer; moving to %s",
                broker.address,
                self.addresses[self._current],
            )

    def close(self) -> None:
        """Closes every channel opened."""
        with self._lock:
            self._closed = True
            opened, self._open = list(self._open.values()), {}
        for broker in opened:
            broker.channel.close()
