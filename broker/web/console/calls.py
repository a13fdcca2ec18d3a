"""The console's gRPC calls, made as its visitor: with the visitor's token,
through the broker's own channel."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from broker.v1 import (
    access_service_pb2,
    access_service_pb2_grpc,
    event_service_pb2_grpc,
    inventory_service_pb2_grpc,
    lease_service_pb2_grpc,
)
from broker.web.gateway import HTTP_STATUS, status_of_error

# Seconds a page waits for the broker before it says so.
CALL_TIMEOUT = 10.0


class CallFailed(Exception):
    """A call the broker refused, with its `google.rpc.Status`."""

    def __init__(self, status: status_pb2.Status):
        super().__init__(status.message)
        self.status = status

    @property
    def code(self) -> int:
        return self.status.code

    def field_errors(self) -> dict[str, str]:
        """The `BadRequest` field violations, by field path."""
        found: dict[str, str] = {}
        for detail in self.status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                detail.Unpack(request)
                for violation in request.field_violations:
                    found.setdefault(violation.field, violation.description)
        return found

    @property
    def http_status(self) -> int:
        """The HTTP status of its code, as the HTTP/JSON API answers it."""
        return HTTP_STATUS.get(self.code, 500)

    @property
    def unauthenticated(self) -> bool:
        return self.code == code_pb2.UNAUTHENTICATED


class Calls:
    """The services, called with `token` (none with authentication off)."""

    def __init__(self, channel: grpc.aio.Channel, token: str = "", holder: str = ""):
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        self.leases = lease_service_pb2_grpc.LeaseServiceStub(channel)
        self.events = event_service_pb2_grpc.EventServiceStub(channel)
        self.access = access_service_pb2_grpc.AccessServiceStub(channel)
        metadata = []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if holder:
            metadata.append(("x-broker-holder", holder))
        self.metadata = tuple(metadata)

    async def __call__(self, method, request):
        """`method(request)` as the visitor; CallFailed when refused."""
        try:
            return await method(request, metadata=self.metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            raise CallFailed(status_of_error(error)) from None

    async def caller(self) -> access_service_pb2.GetCallerResponse:
        return await self(self.access.GetCaller, access_service_pb2.GetCallerRequest())
