"""A held lease as a context manager: acquire, set up, keep alive, tear down,
release.

Entering acquires every request at once, waiting in the broker's queue for up
to `wait` seconds if they are held now (each change of its place is logged
and handed to `on_wait`; Ctrl-C while waiting takes the request out of the
queue), binds the lease to the client's session, builds one `BaseResource`
per grant and runs its lifecycle (`BaseResource.setup`), then renews the
lease in the background. A resource's sub-resources, granted with it, hang
from it (`BaseResource.children`) rather than standing under a label of
their own, and are set up, torn down and given back with it. Leaving,
whatever ended the block (an exception, Ctrl-C), stores the resources' state
if the block failed and `save_state` is on, finalizes them, stops renewing
and releases the lease. A failure during setup tears down what was set up
and releases before it propagates. Errors while tearing down are logged and
never hide the block's own exception.
"""

from __future__ import annotations

import datetime
import enum
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from broker.v1 import lease_pb2
from sdk.base_resource import OPEN, BaseResource, attach_sub_resources, each_in_tree
from sdk.errors import BrokerError
from sdk.keepalive import KeepAlive
from sdk.requirements import ResourceRequest
from sdk.waiting import Waiting, wait_for_grant

if TYPE_CHECKING:
    from sdk.client import BrokerClient

logger = logging.getLogger(__name__)

Held = BaseResource | list[BaseResource]


class ClientWait(enum.Enum):
    """The default of `wait`: the client's own (`BrokerClient.wait`)."""

    WAIT = "the client's wait"


CLIENT_WAIT = ClientWait.WAIT


class Lease:
    """A lease on several requests, each under a label; entering it gives
    label -> resource (a list of resources for a request of `count` > 1).

    Args:
        client: the broker to lease from.
        requests: label -> what to lease under it.
        ttl: seconds the lease lives without renewal; None takes the broker's default.
        skip_init: run only `connect()`, neither `validate()` nor `initialize()`.
        force_initialize: run `initialize()` without asking `validate()`.
        save_state: call `store_state()` on each resource when the block raises.
        state_dir: where those states go, one subdirectory per resource;
            None makes a temporary directory, logged.
        wait: seconds to wait in the broker's queue while the resources are
            held by others; None or 0 does not wait (`ResourceBusyError` at
            once). A wait that ends ungranted raises `DeadlineExceededError`.
            By default, the client's (`BrokerClient.wait`, 60 s unless
            configured).
        priority: the place in the queue, -100 to 100: higher is served first.
        on_wait: called with each `Waiting` (the request's position and who
            holds what it waits for), as it is logged at INFO.
    """

    def __init__(
        self,
        client: BrokerClient,
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
    ) -> None:
        if not requests:
            raise ValueError("a lease needs at least one request")
        if isinstance(wait, ClientWait):
            wait = client.wait
        if wait is not None and wait < 0:
            raise ValueError(f"wait is not negative, not {wait:g}")
        self._client = client
        self._requests = dict(requests)
        # What the broker is asked for; services are built here, unleased.
        self._leased = {label: r for label, r in self._requests.items() if not r.is_service}
        self._entered = False
        self._ttl = ttl
        self._skip_init = skip_init
        self._force_initialize = force_initialize
        self._save_state = save_state
        self._state_dir = state_dir
        self._wait = wait
        self._priority = priority
        self._on_wait = on_wait
        self._lease: lease_pb2.Lease | None = None
        self._secret = ""
        self._instances: list[BaseResource] = []
        self._keepalive: KeepAlive | None = None
        self.resources: dict[str, Held] = {}
        self.lost = threading.Event()

    @property
    def lease_id(self) -> str:
        """The broker's lease ("" when only services were requested)."""
        if self._entered and not self._leased:
            return ""
        return self._held().lease_id

    @property
    def expire_time(self) -> datetime.datetime:
        """When the lease expires unless renewed; moves on with each renewal."""
        return self._held().expire_time.ToDatetime(tzinfo=datetime.UTC)

    @property
    def max_expire_time(self) -> datetime.datetime | None:
        """The latest the lease may live however it is renewed (the broker's
        `leases.max_lifetime`); None when unlimited. Renewing stops there."""
        lease = self._held()
        if not lease.HasField("max_expire_time"):
            return None
        return lease.max_expire_time.ToDatetime(tzinfo=datetime.UTC)

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """Resource name -> the fencing number of its grant, for the
        resources the lease still holds, sub-resources included."""
        if self._entered and not self._leased:
            return {}
        return {
            grant.resource.name: grant.fencing_token
            for grant in self._held().grants
            if not grant.HasField("release_time")
        }

    def release_resources(self, labels: Sequence[str]) -> None:
        """Finalizes and gives back the resources held under `labels`, as
        Rotest's `release_resources(['calc'])` did, and keeps the rest of the
        lease (their fencing numbers unchanged). A resource's sub-resources
        are finalized and given back with it. Giving back everything the
        broker granted ends the lease."""
        unknown = [label for label in labels if label not in self.resources]
        if unknown:
            raise KeyError(
                f"{unknown[0]!r} is not held (held: {', '.join(self.resources) or 'nothing'})"
            )
        leaving = [
            instance for label in labels for instance in each_instance(self.resources.pop(label))
        ]
        for instance in leaving:
            self._instances.remove(instance)
            instance.teardown()
        names = [instance.name for instance in leaving if not instance.is_service()]
        if names and self._lease is not None:
            self._lease = self._client.release_resources(self._lease.lease_id, self._secret, names)
            if self._lease.state != lease_pb2.LEASE_STATE_ACTIVE and self._keepalive is not None:
                self._keepalive.stop()

    def __enter__(self) -> dict[str, Held]:
        if self._entered:
            raise RuntimeError("a Lease is entered once")
        self._entered = True
        if self._leased:
            self._lease, self._secret = self._acquire()
        try:
            self._build()
            for resource in self._instances:
                self._set_up(resource)
            if self._lease is not None:
                self._keepalive = KeepAlive(
                    self._client,
                    self._lease.lease_id,
                    self._secret,
                    interval=self._lease.ttl.ToTimedelta().total_seconds() / 3,
                    lost=self.lost,
                    on_renew=self._renewed,
                )
                self._keepalive.start()
        except BaseException as error:
            self._close(error)
            raise
        return self.resources

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and self._save_state:
            state_dir = self._state_dir or tempfile.mkdtemp(prefix="broker-state-")
            logger.warning("saving the state of the leased resources under %s", state_dir)
            self.store_states(state_dir)
        self._close(exc)

    def _set_up(self, resource: BaseResource) -> None:
        """Runs a resource's setup (its sub-resources' first) and, unless
        `skip_init`, tells the broker how it went for each of them that ran:
        failures in a row quarantine a resource, so a broken board stops
        being handed out. A parent whose sub-resource failed ran nothing of
        its own, and is not reported. A report that fails is only logged:
        the setup's own outcome is what the caller sees."""
        tree = each_in_tree(resource)
        try:
            resource.setup(skip_init=self._skip_init, force_initialize=self._force_initialize)
        except Exception as error:
            outcomes = [(node, node._setup_outcome) for node in tree]
            if not any(outcome for _, outcome in outcomes):
                # A `setup()` of a kind's own that recorded nothing.
                outcomes = [(resource, f"{type(error).__name__}: {error}")]
            for node, outcome in outcomes:
                if outcome is not None:
                    self._report(node, not outcome, outcome)
            raise
        for node in tree:
            if node is resource or node._setup_outcome == "":
                self._report(node, True, "")

    def _report(self, resource: BaseResource, ok: bool, error: str) -> None:
        if self._skip_init or not self._secret or resource.is_service():
            return
        lease = self._held()
        try:
            self._client.report_setup(lease.lease_id, self._secret, resource.name, ok, error)
        except BrokerError as failure:
            logger.warning("could not report the setup of %s: %s", resource.name, failure)

    def _acquire(self) -> tuple[lease_pb2.Lease, str]:
        """The lease, bound to the client's session if it has one; waiting
        in the queue through `WatchAcquireLease` if `wait` allows."""
        requirements = [request.to_requirement(label) for label, request in self._leased.items()]
        session = self._client.lease_session()
        session_id = session.session_id if session is not None else ""
        if not self._wait:
            return self._client.acquire(
                requirements, self._ttl, priority=self._priority, session_id=session_id
            )
        events = self._client.watch_acquire(
            requirements,
            self._ttl,
            max_wait=self._wait,
            priority=self._priority,
            session_id=session_id,
        )
        granted = wait_for_grant(events, self._waiting)
        return granted.lease, granted.secret

    def _waiting(self, waiting: Waiting) -> None:
        logger.info("lease of %s is %s", ", ".join(self._leased), waiting)
        if self._on_wait is not None:
            self._on_wait(waiting)

    def _held(self) -> lease_pb2.Lease:
        if self._lease is None:
            if self._entered and not self._leased:
                raise RuntimeError("only services were requested: there is no broker lease")
            raise RuntimeError("the lease is not acquired yet")
        return self._lease

    def _renewed(self, lease: lease_pb2.Lease) -> None:
        self._lease = lease

    def _build(self) -> None:
        labels = list(self._leased)
        granted: dict[str, list[BaseResource]] = {label: [] for label in self._requests}
        grants = list(self._lease.grants) if self._lease is not None else []
        built: dict[str, BaseResource] = {}
        for grant in grants:
            if grant.parent:
                continue  # a sub-resource: it hangs from its parent
            label = labels[grant.requirement_index]
            resource_class = self._requests[label].resource_class
            instance = resource_class(grant.resource, grant.fencing_token)
            built[grant.resource.name] = instance
            granted[label].append(instance)
            self._instances.append(instance)
        attach_sub_resources(built, grants)
        for label, request in self._requests.items():
            if request.is_service:
                values = {"name": label, **request.constraints}
                service = request.resource_class(None, **values)
                granted[label].append(service)
                self._instances.append(service)
        self.resources = {
            label: instances if self._requests[label].count > 1 else instances[0]
            for label, instances in granted.items()
        }

    def _close(self, pending: BaseException | None) -> None:
        """Tears everything down. The first teardown error is raised when
        nothing else is propagating; every other one is logged."""
        errors: list[tuple[str, Exception]] = []
        for resource in self._instances:
            try:
                resource.teardown()
            except Exception as error:
                errors.append((f"finalizing {resource.name}", error))
        if self._keepalive is not None:
            self._keepalive.stop()
        if self._lease is not None and self._lease.state == lease_pb2.LEASE_STATE_ACTIVE:
            try:
                self._client.release(self.lease_id, self._secret)
            except Exception as error:
                errors.append((f"releasing lease {self.lease_id}", error))
        raised = errors[0][1] if pending is None and errors else None
        for what, failure in errors:
            if failure is not raised:
                logger.error("%s failed", what, exc_info=failure)
        if raised is not None:
            raise raised

    @property
    def instances(self) -> list[BaseResource]:
        """Every resource the lease built for its requests, in grant order;
        their sub-resources hang from them (`BaseResource.children`)."""
        return list(self._instances)

    def store_states(self, state_dir: str) -> list[str]:
        """Calls `store_state()` of each set-up resource with a directory of
        its own under `state_dir` (named after the resource; a sub-resource's
        is inside its parent's, named after its field: `h1/sim`), and
        returns those directories. Runs after a failure, so a resource's own
        failure is logged, never raised."""
        stored: list[str] = []
        for resource in self._instances:
            _store_state(resource, os.path.join(state_dir, resource.name), stored)
        return stored


def _store_state(resource: BaseResource, directory: str, stored: list[str]) -> None:
    if resource.state in OPEN:
        try:
            os.makedirs(directory, exist_ok=True)
            resource.store_state(directory)
            stored.append(directory)
        except Exception:
            logger.exception("storing the state of %s failed", resource.name)
    for field, child in resource.sub_resources.items():
        _store_state(child, os.path.join(directory, field), stored)


def each_instance(held: Held) -> list[BaseResource]:
    """The resources held under one label: one, or a request's list."""
    return held if isinstance(held, list) else [held]


class SingleLease(Lease):
    """A lease on one request, whose `with` gives that request's resource."""

    def __enter__(self) -> Held:  # type: ignore[override]
        (label,) = self._requests
        return super().__enter__()[label]
