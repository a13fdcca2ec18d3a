"""What the authentication tests share: the callers, and a token for each."""

from __future__ import annotations

import time

import grpc

from broker.api.convert import duration
from broker.domain.tokens import Tokens
from broker.domain.values import Role
from broker.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_service_pb2,
    lease_service_pb2_grpc,
)
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import acquire_request, calculator, resource

CACHE_SECONDS = 0.5
# Callers the broker must not let in, and the reason it gives each.
REFUSED = {
    "no credential": "NO_CREDENTIAL",
    "bad token": "BAD_CREDENTIAL",
    "expired token": "TOKEN_EXPIRED",
    "revoked token": "TOKEN_REVOKED",
}
# Callers with a live token: the role of each. `alice` holds the leases the
# calls act on; `bob` is another user.
ROLES = {"viewer": Role.VIEWER, "alice": Role.USER, "bob": Role.USER, "admin": Role.ADMIN}
OWN_LEASE_METHODS = {"RenewLease", "ReleaseLease", "ReleaseResources", "ReportSetup"}


def metadata_of(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def make_tokens() -> dict[str, str]:
    """A live token for each of `ROLES`, and one of each refused kind."""
    tokens = Tokens()
    made = {name: tokens.create(name, role.value)[1] for name, role in ROLES.items()}
    made["bad token"] = "rbk_" + "x" * 43
    made["expired token"] = Tokens(clock=lambda: time.time() - 3600).create(
        "carol", "admin", expires_in=60
    )[1]
    made["revoked token"] = tokens.create("dave", "admin")[1]
    tokens.revoke("dave")
    return made


def create(name: str, kind: str, **fields) -> inventory_service_pb2.CreateResourceRequest:
    message = calculator(name) if kind == "Calculator" else resource(kind, name, fields)
    return inventory_service_pb2.CreateResourceRequest(resource=message)


class Caller:
    """Stubs that present one principal's token."""

    def __init__(self, channel: grpc.Channel, token: str):
        self.channel = channel
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        self.leases = lease_service_pb2_grpc.LeaseServiceStub(channel)
        self.metadata = metadata_of(token)

    def acquire(self, *requirements, max_wait: float = 0.0):
        request = acquire_request(*requirements)
        if max_wait:
            request.max_wait.CopyFrom(duration(max_wait))
        return self.leases.AcquireLease(
            request, timeout=RPC_TIMEOUT + max_wait, metadata=self.metadata
        )

    def release(self, granted) -> None:
        self.leases.ReleaseLease(
            lease_service_pb2.ReleaseLeaseRequest(
                lease_id=granted.lease.lease_id, secret=granted.secret
            ),
            timeout=RPC_TIMEOUT,
            metadata=self.metadata,
        )

    def names(self) -> list[str]:
        response = self.inventory.ListResources(
            inventory_service_pb2.ListResourcesRequest(),
            timeout=RPC_TIMEOUT,
            metadata=self.metadata,
        )
        return [resource.name for resource in response.resources]

    def granted_names(self) -> list[str]:
        response = self.leases.ListLeases(
            lease_service_pb2.ListLeasesRequest(), timeout=RPC_TIMEOUT, metadata=self.metadata
        )
        return sorted(grant.resource.name for lease in response.leases for grant in lease.grants)

    def events(self, *types: int) -> list:
        response = event_service_pb2_grpc.EventServiceStub(self.channel).ListEvents(
            event_service_pb2.ListEventsRequest(filter=event_service_pb2.EventFilter(types=types)),
            timeout=RPC_TIMEOUT,
            metadata=self.metadata,
        )
        return list(response.events)
