"""A typed Python client of the broker, over the generated stubs.

`BrokerClient` has one method per RPC, taking and returning the contract's
messages, plus `lease` and `lease_many`, which hold resources for the length
of a `with` block as Rotest did. Every call carries the client's deadline and
raises a `sdk.errors.BrokerError` subclass instead of a bare `grpc.RpcError`.
"""

from __future__ import annotations

import datetime
import getpass
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from broker.api.field_values import Scalar, to_field_value
from broker.v1 import (
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_pb2,
    lease_service_pb2,
    lease_service_pb2_grpc,
    resource_pb2,
)
from sdk.base_resource import BaseResource
from sdk.errors import from_rpc_error
from sdk.lease import Lease, SingleLease
from sdk.requirements import ResourceRequest, request, to_constraints

__all__ = ["BrokerClient", "ResourceRequest", "request"]

Response = TypeVar("Response")

DEFAULT_ADDRESS = "127.0.0.1:50051"


def default_holder() -> str:
    """Who this process is, as leases show it: `user@host`."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


class BrokerClient:
    """A connection to one broker.

    Args:
        address: the broker's `host:port`.
        timeout: the deadline of each call, in seconds.
        holder: the name leases are taken under, matched against resources'
            `reserved_for`; defaults to `user@host`.
    """

    def __init__(
        self, address: str = DEFAULT_ADDRESS, *, timeout: float = 10.0, holder: str | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.holder = holder or default_holder()
        self._channel = grpc.insecure_channel(address)
        self._inventory = inventory_service_pb2_grpc.InventoryServiceStub(self._channel)
        self._leases = lease_service_pb2_grpc.LeaseServiceStub(self._channel)

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(
        self,
        method: Callable[..., Response],
        request_message: Any,
        timeout: float | None = None,
    ) -> Response:
        try:
            return method(request_message, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    # ------------------------------------------------------------- inventory

    def list_kinds(self) -> list[resource_pb2.Kind]:
        response = self._call(self._inventory.ListKinds, inventory_service_pb2.ListKindsRequest())
        return list(response.kinds)

    def create_resource(
        self,
        kind: str,
        name: str,
        fields: Mapping[str, Scalar],
        *,
        comment: str = "",
        group: str = "",
        is_usable: bool = True,
        reserved_for: str = "",
    ) -> resource_pb2.Resource:
        resource = resource_pb2.Resource(
            name=name,
            kind=kind,
            fields=_field_values(fields),
            is_usable=is_usable,
            comment=comment,
            group=group,
            reserved_for=reserved_for,
        )
        response = self._call(
            self._inventory.CreateResource,
            inventory_service_pb2.CreateResourceRequest(resource=resource),
        )
        return response.resource

    def get_resource(self, name: str) -> resource_pb2.Resource:
        response = self._call(
            self._inventory.GetResource, inventory_service_pb2.GetResourceRequest(name=name)
        )
        return response.resource

    def list_resources(
        self, kind: str = "", where: Mapping[str, Any] | None = None
    ) -> Iterator[resource_pb2.Resource]:
        """Every matching resource, fetching page after page as it is iterated;
        `where` values are as in `request()`."""
        message = inventory_service_pb2.ListResourcesRequest(
            kind=kind, constraints=to_constraints(where or {})
        )
        while True:
            response = self._call(self._inventory.ListResources, message)
            yield from response.resources
            if not response.next_page_token:
                return
            message.page_token = response.next_page_token

    def update_resource(
        self,
        name: str,
        *,
        fields: Mapping[str, Scalar] | None = None,
        is_usable: bool | None = None,
        comment: str | None = None,
        group: str | None = None,
        reserved_for: str | None = None,
        etag: str = "",
    ) -> resource_pb2.Resource:
        """Changes only what is given (not None); with `etag`, only if the
        resource has not changed since it was read (else `AbortedError`)."""
        resource = resource_pb2.Resource(name=name, fields=_field_values(fields or {}))
        paths = [f"fields.{field}" for field in fields or {}]
        for path, value in (
            ("is_usable", is_usable),
            ("comment", comment),
            ("group", group),
            ("reserved_for", reserved_for),
        ):
            if value is not None:
                setattr(resource, path, value)
                paths.append(path)
        response = self._call(
            self._inventory.UpdateResource,
            inventory_service_pb2.UpdateResourceRequest(
                resource=resource, update_mask=field_mask_pb2.FieldMask(paths=paths), etag=etag
            ),
        )
        return response.resource

    def delete_resource(self, name: str, etag: str = "") -> None:
        self._call(
            self._inventory.DeleteResource,
            inventory_service_pb2.DeleteResourceRequest(name=name, etag=etag),
        )

    # ---------------------------------------------------------------- leases

    def acquire(
        self,
        requirements: Sequence[lease_pb2.Requirement],
        ttl: float | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[lease_pb2.Lease, str]:
        """Grants every requirement or none; returns the lease and its secret.
        `ttl` is in seconds (None: the broker's default); `timeout` overrides
        the client's deadline for this call."""
        message = lease_service_pb2.AcquireLeaseRequest(
            requirements=requirements, holder=self.holder
        )
        if ttl is not None:
            message.ttl.CopyFrom(_duration(ttl))
        response = self._call(self._leases.AcquireLease, message, timeout)
        return response.lease, response.secret

    def renew(self, lease_id: str, secret: str) -> lease_pb2.Lease:
        response = self._call(
            self._leases.RenewLease,
            lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret),
        )
        return response.lease

    def release(self, lease_id: str, secret: str) -> lease_pb2.Lease:
        response = self._call(
            self._leases.ReleaseLease,
            lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret),
        )
        return response.lease

    def get_lease(self, lease_id: str) -> lease_pb2.Lease:
        response = self._call(
            self._leases.GetLease, lease_service_pb2.GetLeaseRequest(lease_id=lease_id)
        )
        return response.lease

    def list_leases(
        self,
        state: lease_pb2.LeaseState.ValueType | None = None,
        holder: str = "",
        resource: str = "",
    ) -> Iterator[lease_pb2.Lease]:
        """Every matching lease, newest first, fetching pages as it is iterated."""
        message = lease_service_pb2.ListLeasesRequest(
            state=state or lease_pb2.LEASE_STATE_UNSPECIFIED, holder=holder, resource=resource
        )
        while True:
            response = self._call(self._leases.ListLeases, message)
            yield from response.leases
            if not response.next_page_token:
                return
            message.page_token = response.next_page_token

    def revoke_lease(self, lease_id: str, reason: str) -> lease_pb2.Lease:
        response = self._call(
            self._leases.RevokeLease,
            lease_service_pb2.RevokeLeaseRequest(lease_id=lease_id, reason=reason),
        )
        return response.lease

    # ------------------------------------------------------------ high level

    def lease(
        self,
        resource_class: type[BaseResource],
        *,
        ttl: float | None = None,
        skip_init: bool = False,
        force_initialize: bool = False,
        save_state: bool = False,
        state_dir: str | None = None,
        **constraints: Any,
    ) -> SingleLease:
        """Holds one resource of `resource_class`'s kind for a `with` block::

            with client.lease(Calculator, name="calc") as calc:
                calc.calculate("1 + 1")

        Constraints are as in `request()`; the returned object also tells
        `lease_id`, `expire_time`, `fencing_tokens` and `lost`.
        """
        label = resource_class.DATA_CLASS.kind_name()
        return SingleLease(
            self,
            {label: request(resource_class, **constraints)},
            ttl=ttl,
            skip_init=skip_init,
            force_initialize=force_initialize,
            save_state=save_state,
            state_dir=state_dir,
        )

    def lease_many(
        self,
        requests: Mapping[str, ResourceRequest],
        *,
        ttl: float | None = None,
        skip_init: bool = False,
        force_initialize: bool = False,
        save_state: bool = False,
        state_dir: str | None = None,
    ) -> Lease:
        """Holds several resources at once, all or none, for a `with` block
        that gets label -> resource (a list when the request's count > 1)::

            with client.lease_many({"calc": request(Calculator, group="bench-3"),
                                    "spares": request(Calculator, count=2)}) as held:
                held["calc"].calculate("2 * 3")
        """
        return Lease(
            self,
            requests,
            ttl=ttl,
            skip_init=skip_init,
            force_initialize=force_initialize,
            save_state=save_state,
            state_dir=state_dir,
        )


def _field_values(fields: Mapping[str, Scalar]) -> dict[str, resource_pb2.FieldValue]:
    return {name: to_field_value(value) for name, value in fields.items()}


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(datetime.timedelta(seconds=seconds))
    return duration
