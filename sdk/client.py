"""A typed Python client of the broker, over the generated stubs.

`BrokerClient` has one method per RPC, taking and returning the contract's
messages, plus `lease` and `lease_many`, which hold resources for the length
of a `with` block as Rotest did. Every call carries a deadline and raises a
`sdk.errors.BrokerError` subclass instead of a bare `grpc.RpcError`; a call
interrupted by Ctrl-C is cancelled, so the broker stops working on it (a
waiting acquire leaves the queue). An acquire that fails with UNAVAILABLE
is retried with the same `request_id`, so a lost reply never makes a second
lease; a lease returned that is not active raises `LeaseNotActiveError`.
Given several brokers, a call whose broker stops answering moves to the next
one (`sdk.retry` says how each call is tried). The client's leases are bound
to one session of its own, opened on the first lease, so they are freed
within seconds if this process vanishes.
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

from broker.field_values import Scalar, to_field_value
from broker.v1 import (
    access_service_pb2,
    event_pb2,
    event_service_pb2,
    inventory_service_pb2,
    lease_pb2,
    lease_service_pb2,
    resource_pb2,
)
from sdk import calls
from sdk.base_resource import BaseResource
from sdk.brokers import Broker, Brokers
from sdk.channel import TlsOptions, configured_tls, tls_options
from sdk.config import ClientConfig, load_client_config
from sdk.errors import (
    BrokerError,
    FailedPreconditionError,
    InternalError,
    active,
    from_rpc_error,
    reason_of,
)
from sdk.lease import CLIENT_WAIT, ClientWait, Lease, SingleLease
from sdk.requirements import ResourceRequest, request, to_constraints
from sdk.retry import ACQUIRE, ONCE, REPEATABLE, SILENT, Failover, Kind, Try, run
from sdk.session import Session
from sdk.waiting import AcquireEvents, Granted, Waiting

__all__ = ["BrokerClient", "ResourceRequest", "request"]

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

DEFAULT_TIMEOUT = 10.0  # seconds a call may take in all, retries included
DEFAULT_TRY_TIMEOUT = 3.0  # seconds one try may take when another broker could answer


def default_holder() -> str:
    """Who this process is, as leases show it: `user@host`."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


class BrokerClient:
    """A connection to a broker, or to several sharing one database.

    What is not given is taken from the client configuration
    (`sdk.config`: `BROKER_TARGET`, `BROKER_TOKEN`, the `client:` section of
    `rotest.yml`), read once, when the client is made.

    Args:
        address: the broker's `host:port`, or several brokers' as
            `host:port,host:port`, tried in that order; None takes the
            configured target (default `127.0.0.1:50051`).
        timeout: the deadline of each call in seconds, its retries included.
        try_timeout: with several brokers, the deadline of one try of a call
            safe to repeat (get, list, renew, release, opening a session), in
            seconds: a broker that does not answer within it (frozen, or
            gone) costs one try, and the call moves to the next broker, which
            then serves the client's later calls too. Calls not safe to cut
            short or to repeat (acquire, create, update, delete, revoke) are
            sent only to a broker whose health check answered SERVING within
            `try_timeout`. Keep it well under a third of your leases' TTL, so
            that a renewal that moves on still lands in time. With one broker
            it is not used: each try may take the whole `timeout`.
        holder: the name leases are taken under, matched against resources'
            `reserved_for`; defaults to `user@host`. With authentication on
            the broker takes who you are from your token, and this is only a
            description of the holder (e.g. a CI job's URL).
        session: bind the leases of `lease` and `lease_many` to a session of
            this client's (`lease_session()`), opened on the first lease and
            closed by `close()`; False leaves them to their TTL alone.
        token: the API token sent with every call (as the metadata
            `authorization: Bearer <token>`), for a broker with
            authentication on; None takes the configured one (`BROKER_TOKEN`,
            or the file `client.token_file` names); "" sends none.
        tls: TLS to the broker: True checks its certificate against the
            system's roots; `sdk.TlsOptions(ca_file=..., cert_file=...,
            key_file=...)` against a CA file, showing a client certificate
            for mutual TLS; False is plain TCP; None takes the configured
            files (`BROKER_CA_FILE`, `BROKER_CERT_FILE`, `BROKER_KEY_FILE`,
            or `client.tls`, `client.ca_file`, ...; plain TCP if none is
            set). The files are read once, when the options are made;
            nothing is reloaded later.
        wait: seconds `lease` and `lease_many` wait in the queue unless
            told otherwise; None takes the configured
            `resource_request_timeout` (default 60).
        config: the client configuration to take what is not given from;
            None loads it (`sdk.config.load_client_config`).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        try_timeout: float = DEFAULT_TRY_TIMEOUT,
        holder: str | None = None,
        session: bool = True,
        token: str | None = None,
        tls: bool | TlsOptions | None = None,
        wait: float | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        for name, value in (("timeout", timeout), ("try_timeout", try_timeout)):
            if not value > 0:
                raise ValueError(f"{name} is a positive number of seconds, not {value!r}")
        if wait is not None and not wait >= 0:
            raise ValueError(f"wait is a number of seconds of at least 0, not {wait!r}")
        if config is None and None in (address, token, tls, holder, wait):
            config = load_client_config()
        config = config or ClientConfig()
        self.address = config.target if address is None else address
        self.timeout = timeout
        self.try_timeout = try_timeout
        self.holder = holder or config.holder or default_holder()
        self.wait = config.wait if wait is None else wait
        self.config = config
        # Read once: a token is never swapped behind the caller's back.
        self._brokers = Brokers(
            self.address,
            config.token if token is None else token,
            configured_tls(config) if tls is None else tls_options(tls),
        )
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
        self._brokers.close()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The brokers this client may use, in the order it tries them."""
        return self._brokers.addresses

    def _call(
        self,
        method: Callable[[Broker], Any],
        request_message: Any,
        *,
        kind: Kind = REPEATABLE,
        timeout: float | None = None,
    ) -> Any:
        """One unary call, `method(broker)` naming its RPC, tried as `kind`
        says (`sdk.retry`)."""
        return self._run(
            lambda attempt: _unary(method(attempt.broker), request_message, attempt.timeout),
            kind=kind,
            timeout=timeout,
        )

    def _run(
        self, send: Callable[[Try], Item], *, kind: Kind, timeout: float | None = None
    ) -> Item:
        return run(
            self._brokers,
            send,
            timeout=self.timeout if timeout is None else timeout,
            try_timeout=self.try_timeout,
            kind=kind,
        )

    def _paged(
        self, method: Callable[[Broker], Any], message: Any, items: Callable[[Any], Iterable[Item]]
    ) -> Iterator[Item]:
        """Every item of a listing, fetching the next page as it is
        iterated; each page is a call of its own, with its own deadline."""
        while True:
            response = self._call(method, message)
            yield from items(response)
            if not response.next_page_token:
                return
            message.page_token = response.next_page_token

    # ------------------------------------------------------------- inventory

    def whoami(self) -> access_service_pb2.GetCallerResponse:
        """Who the broker takes this client to be: its principal's name,
        role and groups (`AccessService.GetCaller`)."""
        return self._call(
            lambda broker: broker.access.GetCaller, access_service_pb2.GetCallerRequest()
        )

    def list_kinds(self) -> list[resource_pb2.Kind]:
        response = self._call(
            lambda broker: broker.inventory.ListKinds, inventory_service_pb2.ListKindsRequest()
        )
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
            lambda broker: broker.inventory.CreateResource,
            inventory_service_pb2.CreateResourceRequest(resource=resource),
            kind=ONCE,
        )
        return response.resource

    def get_resource(self, name: str) -> resource_pb2.Resource:
        response = self._call(
            lambda broker: broker.inventory.GetResource,
            inventory_service_pb2.GetResourceRequest(name=name),
        )
        return response.resource

    def list_resources(
        self, kind: str = "", where: Mapping[str, Any] | None = None
    ) -> Iterator[resource_pb2.Resource]:
        """Every matching resource, fetching page after page as it is iterated;
        `where` values are as in `request()` (`sim__carrier` reaches through
        the sub-resource field `sim` of an imported kind's data; `sim.carrier`
        of any)."""
        message = inventory_service_pb2.ListResourcesRequest(
            kind=kind, constraints=to_constraints(where or {}, kind or None)
        )
        return self._paged(
            lambda broker: broker.inventory.ListResources, message, lambda page: page.resources
        )

    def update_resource(
        self,
        name: str,
        *,
        fields: Mapping[str, Scalar] | None = None,
        is_usable: bool | None = None,
        comment: str | None = None,
        group: str | None = None,
        reserved_for: str | None = None,
        reserved_until: float | None = None,
        reservation_reason: str | None = None,
        etag: str = "",
    ) -> resource_pb2.Resource:
        """Changes only what is given (not None); with `etag`, only if the
        resource has not changed since it was read (else `AbortedError`).
        `reserved_for` empty removes a reservation; `reserved_until` (epoch
        seconds) ends one then."""
        resource = resource_pb2.Resource(name=name, fields=_field_values(fields or {}))
        paths = [f"fields.{field}" for field in fields or {}]
        for path, value in (
            ("is_usable", is_usable),
            ("comment", comment),
            ("group", group),
            ("reserved_for", reserved_for),
            ("reservation_reason", reservation_reason),
        ):
            if value is not None:
                setattr(resource, path, value)
                paths.append(path)
        if reserved_until is not None:
            resource.reserved_until.FromNanoseconds(round(reserved_until * 1e9))
            paths.append("reserved_until")
        response = self._call(
            lambda broker: broker.inventory.UpdateResource,
            inventory_service_pb2.UpdateResourceRequest(
                resource=resource, update_mask=field_mask_pb2.FieldMask(paths=paths), etag=etag
            ),
            kind=ONCE,
        )
        return response.resource

    def delete_resource(self, name: str, etag: str = "") -> None:
        self._call(
            lambda broker: broker.inventory.DeleteResource,
            inventory_service_pb2.DeleteResourceRequest(name=name, etag=etag),
            kind=ONCE,
        )

    def set_out_of_service(self, name: str, reason: str) -> resource_pb2.Resource:
        """Takes a resource out of service (admins): never granted until
        `return_to_service`."""
        response = self._call(
            lambda broker: broker.inventory.SetOutOfService,
            inventory_service_pb2.SetOutOfServiceRequest(name=name, reason=reason),
            kind=ONCE,
        )
        return response.resource

    def return_to_service(self, name: str) -> resource_pb2.Resource:
        """Puts a resource back in service (admins)."""
        response = self._call(
            lambda broker: broker.inventory.ReturnToService,
            inventory_service_pb2.ReturnToServiceRequest(name=name),
            kind=ONCE,
        )
        return response.resource

    # ---------------------------------------------------------------- leases

    def acquire(
        self,
        requirements: Sequence[lease_pb2.Requirement | ResourceRequest],
        ttl: float | None = None,
        *,
        max_wait: float | None = None,
        priority: int = 0,
        request_id: str | None = None,
        session_id: str = "",
        timeout: float | None = None,
    ) -> tuple[lease_pb2.Lease, str]:
        """Grants every requirement or none; returns the lease and its
        secret. A lease returned that is not active (a replayed `request_id`
        whose lease ended) raises `LeaseNotActiveError` instead.

        Args:
            requirements: `lease_pb2.Requirement` messages, or `request(...)`
                objects (`sdk.request`), each one requirement with no label.
            ttl: seconds the lease lives without renewal (None: the broker's default).
            max_wait: seconds to wait in the queue if the resources are held
                now; None or 0 does not wait (`ResourceBusyError` at once). A
                wait that ends ungranted raises `DeadlineExceededError`.
            priority: the place in the queue, -100 to 100, higher first.
            request_id: the idempotency key; None makes a fresh one. A try
                that fails with UNAVAILABLE is retried (3 tries in all, or
                one per broker if more) with the same key, on the next
                broker if there are several, so a lost reply never makes a
                second lease.
            session_id: an open session to bind the lease to.
            timeout: the deadline of the whole call, retries included;
                None is the client's timeout, plus `max_wait` if given.
        """
        message = self._acquire_request(
            requirements, ttl, max_wait, priority, request_id, session_id
        )
        response = self._call(
            lambda broker: broker.leases.AcquireLease,
            message,
            kind=ACQUIRE,
            timeout=self._acquire_timeout(max_wait, timeout),
        )
        return active(response.lease), response.secret

    def watch_acquire(
        self,
        requirements: Sequence[lease_pb2.Requirement | ResourceRequest],
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
        errors are `acquire`'s (a granted lease that is not active raises
        `LeaseNotActiveError`); the call starts on the first `next()`, and
        closing the generator before the grant cancels it (the request
        leaves the queue). `sdk.waiting.wait_for_grant` consumes it."""
        message = lease_service_pb2.WatchAcquireLeaseRequest(
            request=self._acquire_request(
                requirements, ttl, max_wait, priority, request_id, session_id
            )
        )
        failover = Failover(
            self._brokers,
            timeout=self._acquire_timeout(max_wait, timeout),
            try_timeout=self.try_timeout,
            kind=ACQUIRE,
        )
        while True:
            try:
                attempt = failover.next_try()
                call = attempt.broker.leases.WatchAcquireLease(message, timeout=attempt.timeout)
                try:
                    for response in calls.responses(call):
                        if response.HasField("granted"):
                            granted = response.granted
                            yield Granted(active(granted.lease), granted.secret)
                            return
                        yield Waiting(response.waiting)
                except grpc.RpcError as rpc_error:
                    raise from_rpc_error(rpc_error) from rpc_error
                finally:
                    call.cancel()
                raise InternalError(
                    grpc.StatusCode.INTERNAL, "the broker ended the wait without a grant"
                )
            except SILENT as error:
                failover.failed(error)

    def list_waiters(self) -> Iterator[lease_pb2.Waiter]:
        """Every waiting request in the order they will be served, fetching
        pages as it is iterated."""
        return self._paged(
            lambda broker: broker.leases.ListWaiters,
            lease_service_pb2.ListWaitersRequest(),
            lambda page: page.waiters,
        )

    def _acquire_request(
        self,
        requirements: Sequence[lease_pb2.Requirement | ResourceRequest],
        ttl: float | None,
        max_wait: float | None,
        priority: int,
        request_id: str | None,
        session_id: str,
    ) -> lease_service_pb2.AcquireLeaseRequest:
        message = lease_service_pb2.AcquireLeaseRequest(
            requirements=[_requirement(requirement) for requirement in requirements],
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
        """The lease, renewed for another TTL; a lease returned that is not
        active raises `LeaseNotActiveError`."""
        response = self._call(
            lambda broker: broker.leases.RenewLease,
            lease_service_pb2.RenewLeaseRequest(lease_id=lease_id, secret=secret),
        )
        return active(response.lease)

    def release_resources(
        self, lease_id: str, secret: str, resources: Sequence[str]
    ) -> lease_pb2.Lease:
        """Gives back the named resources of a lease and keeps the rest;
        returns the lease as it is now (released if nothing is left). Sent
        once: a retry after a lost reply could find a name given back
        already and fail."""
        message = lease_service_pb2.ReleaseResourcesRequest(
            lease_id=lease_id, secret=secret, resources=list(resources)
        )
        response = self._call(lambda broker: broker.leases.ReleaseResources, message, kind=ONCE)
        return response.lease

    def release(self, lease_id: str, secret: str) -> lease_pb2.Lease:
        """Ends the lease and returns it. When an earlier try may have
        reached the broker (its reply was lost, or the broker stopped
        answering) and a later one finds the lease already released
        (FAILED_PRECONDITION, `LEASE_RELEASED`), the release was done:
        the lease is read back and returned. Expired or revoked leases
        still raise."""
        message = lease_service_pb2.ReleaseLeaseRequest(lease_id=lease_id, secret=secret)

        def send(attempt: Try) -> lease_pb2.Lease | None:
            try:
                return _unary(attempt.broker.leases.ReleaseLease, message, attempt.timeout).lease
            except FailedPreconditionError as error:
                if attempt.number > 1 and reason_of(error) == "LEASE_RELEASED":
                    return None  # released by an earlier try
                raise

        released = self._run(send, kind=REPEATABLE)
        if released is not None:
            return released
        logger.info("lease %s was released by an earlier try of this release", lease_id)
        return self.get_lease(lease_id)

    def report_setup(
        self, lease_id: str, secret: str, resource: str, ok: bool, error: str = ""
    ) -> lease_service_pb2.ReportSetupResponse:
        """Tells the broker how the setup of one of a lease's resources went;
        failures in a row quarantine it."""
        return self._call(
            lambda broker: broker.leases.ReportSetup,
            lease_service_pb2.ReportSetupRequest(
                lease_id=lease_id, secret=secret, resource=resource, ok=ok, error=error[:1024]
            ),
            kind=ONCE,
        )

    def get_lease(self, lease_id: str) -> lease_pb2.Lease:
        response = self._call(
            lambda broker: broker.leases.GetLease,
            lease_service_pb2.GetLeaseRequest(lease_id=lease_id),
        )
        return response.lease

    def list_leases(
        self,
        state: lease_pb2.LeaseState.ValueType | None = None,
        holder: str = "",
        resource: str = "",
        principal: str = "",
    ) -> Iterator[lease_pb2.Lease]:
        """Every matching lease, newest first, fetching pages as it is iterated."""
        message = lease_service_pb2.ListLeasesRequest(
            state=state or lease_pb2.LEASE_STATE_UNSPECIFIED,
            holder=holder,
            resource=resource,
            principal=principal,
        )
        return self._paged(
            lambda broker: broker.leases.ListLeases, message, lambda page: page.leases
        )

    def revoke_lease(self, lease_id: str, reason: str) -> lease_pb2.Lease:
        response = self._call(
            lambda broker: broker.leases.RevokeLease,
            lease_service_pb2.RevokeLeaseRequest(lease_id=lease_id, reason=reason),
            kind=ONCE,
        )
        return response.lease

    # ---------------------------------------------------------------- events

    def list_events(
        self, filter: event_service_pb2.EventFilter | None = None, after_sequence: int = 0
    ) -> Iterator[event_pb2.Event]:
        """Every event after `after_sequence` that passes `filter`, oldest
        first, fetching pages as it is iterated."""
        return self._paged(
            lambda broker: broker.events.ListEvents,
            event_service_pb2.ListEventsRequest(filter=filter, after_sequence=after_sequence),
            lambda page: page.events,
        )

    def watch_events(
        self, filter: event_service_pb2.EventFilter | None = None, after_sequence: int = 0
    ) -> Iterator[event_pb2.Event]:
        """The events after `after_sequence` that pass `filter`: those
        stored, then each new one, for as long as it is iterated (closing
        the generator ends the watch). Raises `OutOfRangeError` for a cursor
        older than the broker keeps, and `ResourceBusyError`
        (RESOURCE_EXHAUSTED) when this reader fell too far behind: resume
        after the last sequence read."""
        message = event_service_pb2.WatchEventsRequest(filter=filter, after_sequence=after_sequence)
        broker = self._brokers.current()
        call = broker.events.WatchEvents(message)
        try:
            for response in calls.responses(call):
                yield response.event
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error
        finally:
            call.cancel()

    def usage_stats(
        self,
        resource: str = "",
        kind: str = "",
        start_time: datetime.datetime | None = None,
        end_time: datetime.datetime | None = None,
        by_kind: bool = False,
    ) -> list[event_service_pb2.UsageStats]:
        """How resources were used in [start_time, end_time), per resource or
        (`by_kind`) per kind: grants, held time, waits, expiries, revokes."""
        message = event_service_pb2.GetUsageStatsRequest(
            resource=resource,
            kind=kind,
            group_by=(
                event_service_pb2.USAGE_GROUPING_KIND
                if by_kind
                else event_service_pb2.USAGE_GROUPING_RESOURCE
            ),
        )
        if start_time is not None:
            message.start_time.FromDatetime(start_time)
        if end_time is not None:
            message.end_time.FromDatetime(end_time)
        return list(self._call(lambda broker: broker.events.GetUsageStats, message).stats)

    # -------------------------------------------------------------- sessions

    def open_session(self, keepalive_timeout: float | None = None) -> Session:
        """A new open session of this client's holder; the caller closes it.
        `keepalive_timeout` in seconds, None for the broker's default.
        Opening is tried as a call safe to repeat: a broker that does not
        answer within the try's deadline is left for the next one. A session
        lost because its broker stopped answering makes the client move on
        from that broker too."""

        def send(attempt: Try) -> Session:
            session = Session(
                attempt.broker.leases,
                holder=self.holder,
                keepalive_timeout=keepalive_timeout,
                on_lost=lambda error: self._session_lost(attempt.broker, error),
            )
            return session.open(attempt.timeout)

        return self._run(send, kind=REPEATABLE)

    def _session_lost(self, broker: Broker, error: BrokerError) -> None:
        if isinstance(error, SILENT):
            self._brokers.failed(broker)

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
        wait: float | ClientWait | None = CLIENT_WAIT,
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
        label = resource_class.kind_name()
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
        wait: float | ClientWait | None = CLIENT_WAIT,
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


def _unary(method: Any, request_message: Any, timeout: float) -> Any:
    """One unary call with `timeout`; Ctrl-C while it is in flight cancels it."""
    future = method.future(request_message, timeout=timeout)
    try:
        return calls.result(future)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error


def _field_values(fields: Mapping[str, Scalar]) -> dict[str, resource_pb2.FieldValue]:
    return {name: to_field_value(value) for name, value in fields.items()}


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(datetime.timedelta(seconds=seconds))
    return duration


def _requirement(requirement: lease_pb2.Requirement | ResourceRequest) -> lease_pb2.Requirement:
    """The wire form of one requirement given to `acquire`."""
    if isinstance(requirement, ResourceRequest):
        return requirement.to_requirement("")
    if isinstance(requirement, lease_pb2.Requirement):
        return requirement
    raise TypeError(
        "a requirement is a lease_pb2.Requirement or a request(...) object, "
        f"not {type(requirement).__name__}"
    )
