"""A typed Python client of the broker, over the generated stubs.

`BrokerClient` has one method per RPC, taking and returning the contract's
messages, plus `lease` and `lease_many`, which hold resources for the length
of a `with` block as Rotest did. Every call carries the client's deadline and
raises a `sdk.errors.BrokerError` subclass instead of a bare `grpc.RpcError`;
a call interrupted by Ctrl-C is cancelled, so the broker stops working on it
(a waiting acquire leaves the queue). An acquire that fails with UNAVAILABLE
is retried with the same `request_id`, so a lost reply never makes a second
lease. The client's leases are bound to one session of its own, opened on
the first lease, so they are freed within seconds if this process vanishes.
"""

from __future__ import annotations

import datetime
import getpass
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from sdk import calls
from sdk.base_resource import BaseResource
from sdk.channel import open_channel
from sdk.errors import InternalError, UnavailableError, from_rpc_error
from sdk.lease import DEFAULT_WAIT, Lease, SingleLease
from sdk.requirements import ResourceRequest, request, to_constraints
from sdk.retry import Retry
from sdk.session import Session
from sdk.waiting import AcquireEvents, Granted, Waiting

__all__ = ["BrokerClient", "ResourceRequest", "request"]

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

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
        session: bind the leases of `lease` and `lease_many` to a session of
            this client's (`lease_session()`), opened on the first lease and
            closed by `close()`; False leaves them to their TTL alone.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float = 10.0,
        holder: str | None = None,
        session: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.holder = holder or default_holder()
        self._channel = open_channel(address)
        self._inventory = inventory_service_pb2_grpc.InventoryServiceStub(self._channel)
        self._leases = lease_service_pb2_grpc.LeaseServiceStub(self._channel)
        self._use_session = session
        self._session: Session | None = None
        self._session_lock = threading.Lock()

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
        """Closes the client's session (releasing the leases bound to it),
        then the connection."""
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close(self.timeout)
        self._channel.close()

    def _call(
        self,
        method: Any,
        request_message: Any,
        timeout: float | None = None,
    ) -> Any:
        """One unary call; Ctrl-C while it is in flight cancels it."""
        future = method.future(
            request_message, timeout=self.timeout if timeout is None else timeout
        )
        try:
            return calls.result(future)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def _paged(
        self, method: Any, message: Any, items: Callable[[Any], Iterable[Item]]
    ) -> Iterator[Item]:
        """Every item of a listing, fetching the next page as it is iterated."""
        while True:
            response = self._call(method, message)
            yield from items(response)
            if not response.next_page_token:
                return
            message.page_token = response.next_page_token

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
        return self._paged(self._inventory.ListResources, message, lambda page: page.resources)

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
        max_wait: float | None = None,
        priority: int = 0,
        request_id: str | None = None,
        session_id: str = "",
        timeout: float | None = None,
    ) -> tuple[lease_pb2.Lease, str]:
        """Grants every requirement or none; returns the lease and its secret.

        Args:
            ttl: seconds the lease lives without renewal (None: the broker's default).
            max_wait: seconds to wait in the queue if the resources are held
                now; None or 0 does not wait (`ResourceBusyError` at once). A
                wait that ends ungranted raises `DeadlineExceededError`.
            priority: the place in the queue, -100 to 100, higher first.
            request_id: the idempotency key; None makes a fresh one. A try
                that fails with UNAVAILABLE is retried (3 tries in all) with
                the same key, so a lost reply never makes a second lease.
            session_id: an open session to bind the lease to.
            timeout: the deadline of the whole call, retries included;
                None is the client's timeout, plus `max_wait` if given.
        """
        message = self._acquire_request(
            requirements, ttl, max_wait, priority, request_id, session_id
        )
        retry = Retry(self._acquire_timeout(max_wait, timeout))
        while True:
            try:
                response = self._call(self._leases.AcquireLease, message, retry.remaining())
            except UnavailableError as error:
                retry.after(error)
                continue
            return response.lease, response.secret

    def watch_acquire(
        self,
        requirements: Sequence[lease_pb2.Requirement],
        ttl: float | None = None,
        *,
        max_wait: float | None = None,
        priority: int = 0,
        request_id: str | None = None,
        session_id: str = "",
        timeout: float | None = None,
    ) -> AcquireEvents:
        """`acquire` that reports its wait: yields a `Waiting` each time the
        request's place in the queue or its blocker changes, then one
        `Granted` (the lease and its secret), and ends. The arguments and
        errors are `acquire`'s; the call starts on the first `next()`, and
        closing the generator before the grant cancels it (the request
        leaves the queue). `sdk.waiting.wait_for_grant` consumes it."""
        message = lease_service_pb2.WatchAcquireLeaseRequest(
            request=self._acquire_request(
                requirements, ttl, max_wait, priority, request_id, session_id
            )
        )
        retry = Retry(self._acquire_timeout(max_wait, timeout))
        while True:
            call = self._leases.WatchAcquireLease(message, timeout=retry.remaining())
            try:
                for response in calls.responses(call):
                    if response.HasField("granted"):
                        yield Granted(response.granted.lease, response.granted.secret)
                        return
                    yield Waiting(response.waiting)
                raise InternalError(
                    grpc.StatusCode.INTERNAL, "the broker ended the wait without a grant"
                )
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if not isinstance(error, UnavailableError):
                    raise error from rpc_error
                retry.after(error)
            finally:
                call.cancel()

    def list_waiters(self) -> Iterator[lease_pb2.Waiter]:
        """Every waiting request in the order they will be served, fetching
        pages as it is iterated."""
        return self._paged(
            self._leases.ListWaiters,
            lease_service_pb2.ListWaitersRequest(),
            lambda page: page.waiters,
        )

    def _acquire_request(
        self,
        requirements: Sequence[lease_pb2.Requirement],
        ttl: float | None,
        max_wait: float | None,
        priority: int,
        request_id: str | None,
        session_id: str,
    ) -> lease_service_pb2.AcquireLeaseRequest:
        message = lease_service_pb2.AcquireLeaseRequest(
            requirements=requirements,
            holder=self.holder,
            priority=priority,
            request_id=request_id or str(uuid.uuid4()),
            session_id=session_id,
        )
        if ttl is not None:
            message.ttl.CopyFrom(_duration(ttl))
        if max_wait is not None:
            message.max_wait.CopyFrom(_duration(max_wait))
        return message

    def _acquire_timeout(self, max_wait: float | None, timeout: float | None) -> float:
        """An acquire's deadline: the broker's wait ends first and says so."""
        if timeout is not None:
            return timeout
        return self.timeout + (max_wait or 0.0)

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
        return self._paged(self._leases.ListLeases, message, lambda page: page.leases)

    def revoke_lease(self, lease_id: str, reason: str) -> lease_pb2.Lease:
        response = self._call(
            self._leases.RevokeLease,
            lease_service_pb2.RevokeLeaseRequest(lease_id=lease_id, reason=reason),
        )
        return response.lease

    # -------------------------------------------------------------- sessions

    def open_session(self, keepalive_timeout: float | None = None) -> Session:
        """A new open session of this client's holder; the caller closes it.
        `keepalive_timeout` in seconds, None for the broker's default."""
        session = Session(self._leases, holder=self.holder, keepalive_timeout=keepalive_timeout)
        return session.open(self.timeout)

    def lease_session(self) -> Session | None:
        """The session that `lease` and `lease_many` bind leases to, opened on
        first use and opened anew if it was lost; None when the client was
        made with `session=False`."""
        if not self._use_session:
            return None
        with self._session_lock:
            if self._session is None or self._session.lost.is_set():
                if self._session is not None:
                    logger.warning("session %s was lost; opening another", self._session.session_id)
                    self._session.close()
                self._session = self.open_session()
            return self._session

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
        wait: float | None = DEFAULT_WAIT,
        priority: int = 0,
        on_wait: Callable[[Waiting], None] | None = None,
        **constraints: Any,
    ) -> SingleLease:
        """Holds one resource of `resource_class`'s kind for a `with` block::

            with client.lease(Calculator, name="calc", wait=300) as calc:
                calc.calculate("1 + 1")

        Constraints are as in `request()`; the other arguments are those of
        `Lease`. The returned object also tells `lease_id`, `expire_time`,
        `fencing_tokens` and `lost`.
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
            wait=wait,
            priority=priority,
            on_wait=on_wait,
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
        wait: float | None = DEFAULT_WAIT,
        priority: int = 0,
        on_wait: Callable[[Waiting], None] | None = None,
    ) -> Lease:
        """Holds several resources at once, all or none, for a `with` block
        that gets label -> resource (a list when the request's count > 1)::

            with client.lease_many({"calc": request(Calculator, group="bench-3"),
                                    "spares": request(Calculator, count=2)}) as held:
                held["calc"].calculate("2 * 3")

        The arguments are those of `Lease`.
        """
        return Lease(
            self,
            requests,
            ttl=ttl,
            skip_init=skip_init,
            force_initialize=force_initialize,
            save_state=save_state,
            state_dir=state_dir,
            wait=wait,
            priority=priority,
            on_wait=on_wait,
        )


def _field_values(fields: Mapping[str, Scalar]) -> dict[str, resource_pb2.FieldValue]:
    return {name: to_field_value(value) for name, value in fields.items()}


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(datetime.timedelta(seconds=seconds))
    return duration
