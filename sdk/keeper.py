"""Holding what tests declare, test after test, as Rotest's runner did.

Each test's requests are leased at once, all or nothing, waiting in the
broker's queue as the client's configuration allows, and bound to the
client's session (so a killed run frees them within seconds). Consecutive
tests that declare the same resources keep one lease between them: the
resources are set up once and handed to the next test as they are. A
resource is released after its test, and set up afresh for the next, when
the test marked it dirty (`BaseResource.mark_dirty()`), when the test
ended in an error rather than a failed assertion (as Rotest did), or when
the lease was lost. A sub-resource goes with its parent: marking it dirty
releases the parent, and what is held is reported as `phone` and
`phone.sim`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from sdk.base_resource import BaseResource
from sdk.client import BrokerClient
from sdk.declarations import DeclarationError, marker_requests
from sdk.lease import Held, Lease, each_instance
from sdk.overrides import Overrides
from sdk.requirements import ResourceRequest
from sdk.waiting import Waiting

logger = logging.getLogger(__name__)

Requests = Mapping[str, ResourceRequest]


@dataclasses.dataclass(frozen=True)
class HeldResource:
    """One resource a test holds, for its report; a sub-resource's label is
    its parent's and its field's, `phone.sim`."""

    label: str
    name: str
    kind: str
    fencing_token: int
    lease_id: str

    def __str__(self) -> str:
        return (
            f"{self.name} ({self.kind}, fencing token {self.fencing_token}, lease {self.lease_id})"
        )


@dataclasses.dataclass
class _Holding:
    requests: dict[str, ResourceRequest]
    lease: Lease
    resources: dict[str, Held]

    def reusable(self) -> bool:
        return not self.lease.lost.is_set() and not any(r.dirty for r in self.lease.instances)


class ResourceKeeper:
    """Leases each test's requests, keeping them for the next test that
    declares the same.

    Args:
        client: makes the client to lease through, on first need.
        skip_init: run only `connect()` on the resources.
        save_state: `store_state()` of a failed test's resources.
        priority: the requests' place in the broker's queue, -100 to 100.
        overrides: the run's `--resource` overrides.
        on_wait: told each change of a waiting lease's place in the queue.
    """

    def __init__(
        self,
        client: Callable[[], BrokerClient],
        *,
        skip_init: bool = False,
        save_state: bool = False,
        priority: int = 0,
        overrides: Overrides | None = None,
        on_wait: Callable[[str, Waiting], None] | None = None,
    ) -> None:
        self._make_client = client
        self._client: BrokerClient | None = None
        self.skip_init = skip_init
        self.save_state = save_state
        self.priority = priority
        self._overrides = overrides
        self._on_wait = on_wait
        self._holding: _Holding | None = None
        # Leases a test asked for mid-test: released when it ends.
        self._extra: list[_Holding] = []
        self.leases_taken = 0

    @property
    def client(self) -> BrokerClient:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def resolve(self, requests: Requests) -> dict[str, ResourceRequest]:
        """`requests` as this run asks for them: with the overrides applied."""
        if self._overrides:
            return self._overrides.apply(requests)
        return dict(requests)

    def hold(self, requests: Requests) -> dict[str, Held]:
        """The resources for one test: those held already when the last
        test asked for the same and left them clean, else a new lease (the
        old one released first)."""
        wanted = self.resolve(requests)
        if self._holding is not None:
            if self._holding.requests == wanted and self._holding.reusable():
                return self._holding.resources
            self.release()
        lease = self.client.lease_many(
            wanted,
            skip_init=self.skip_init,
            priority=self.priority,
            on_wait=self._waiting(wanted),
        )
        resources = lease.__enter__()
        self.leases_taken += 1
        self._holding = _Holding(wanted, lease, resources)
        return resources

    def request_resources(self, requests: Iterable[ResourceRequest]) -> dict[str, Held]:
        """Leases more in the middle of a test, as Rotest's
        `request_resources([...])` did: named requests (the run's overrides
        applied), in a lease of their own, released when the test ends."""
        named = marker_requests(requests, {})
        taken = set(self._holding.resources) if self._holding is not None else set()
        for extra in self._extra:
            taken |= set(extra.resources)
        clash = sorted(taken & set(named))
        if clash:
            raise DeclarationError(f"{clash[0]!r} is held already: name the new request otherwise")
        wanted = self.resolve(named)
        lease = self.client.lease_many(
            wanted, skip_init=self.skip_init, priority=self.priority, on_wait=self._waiting(wanted)
        )
        resources = lease.__enter__()
        self.leases_taken += 1
        self._extra.append(_Holding(wanted, lease, resources))
        return resources

    def held(self) -> list[HeldResource]:
        """What is held now, label by label, each resource followed by its
        sub-resources."""
        records: list[HeldResource] = []
        for holding in self._holdings():
            lease = holding.lease
            labels = {
                id(instance): label
                for label, held in holding.resources.items()
                for instance in each_instance(held)
            }
            for instance in lease.instances:
                lease_id = "" if instance.is_service() else lease.lease_id
                records += _records(labels[id(instance)], instance, lease_id)
        return records

    @property
    def requested_mid_test(self) -> bool:
        """Whether the test asked for more than it declared."""
        return bool(self._extra)

    def _holdings(self) -> list[_Holding]:
        return ([self._holding] if self._holding is not None else []) + self._extra

    def keeps(self, requests: Requests | None) -> bool:
        """Whether the resources held now would serve a test declaring
        `requests` (None: a test that declares none)."""
        if self._holding is None or requests is None:
            return False
        return self._holding.requests == self.resolve(requests) and self._holding.reusable()

    def finish(
        self, *, failed: bool, errored: bool, state_dir: str | None, keep: bool
    ) -> list[str]:
        """After a test: stores the resources' state into `state_dir` if it
        failed and `save_state` is on (returning the directories written),
        then releases the lease unless `keep` and every resource is clean."""
        stored: list[str] = []
        if failed and self.save_state and state_dir:
            for holding in self._holdings():
                stored += holding.lease.store_states(state_dir)
        self._release_extra()
        if self._holding is None:
            return stored
        if errored:
            for instance in self._holding.lease.instances:
                instance.mark_dirty()
        if not keep or not self._holding.reusable():
            self.release()
        return stored

    def release_resources(self, labels: Sequence[str]) -> None:
        """Gives back, mid-test, what is held under `labels`, keeping the
        rest (Rotest's `release_resources(['calc'])`); the next test that
        declares them gets them anew."""
        owners = {label: holding for holding in self._holdings() for label in holding.resources}
        unknown = [label for label in labels if label not in owners]
        if unknown:
            raise KeyError(f"{unknown[0]!r} is not held (held: {', '.join(owners) or 'nothing'})")
        for holding in self._holdings():
            mine = [label for label in labels if owners[label] is holding]
            if mine:
                holding.lease.release_resources(mine)
                for label in mine:
                    holding.requests.pop(label, None)

    def release(self) -> None:
        """Finalizes and releases what is held, if anything."""
        holding, self._holding = self._holding, None
        try:
            self._release_extra()
        finally:
            if holding is not None:
                holding.lease.__exit__(None, None, None)

    def _release_extra(self) -> None:
        extra, self._extra = self._extra, []
        for holding in extra:
            holding.lease.__exit__(None, None, None)

    def close(self) -> None:
        """Releases what is held and closes the client (ending its session)."""
        try:
            self.release()
        finally:
            client, self._client = self._client, None
            if client is not None:
                client.close()

    def _waiting(self, requests: Requests) -> Callable[[Waiting], None] | None:
        if self._on_wait is None:
            return None
        on_wait = self._on_wait
        names = ", ".join(requests)
        return lambda waiting: on_wait(names, waiting)


def _records(label: str, resource: BaseResource, lease_id: str) -> list[HeldResource]:
    records = [
        HeldResource(label, resource.name, resource.kind_name(), resource.fencing_token, lease_id)
    ]
    for field, child in resource.sub_resources.items():
        records += _records(f"{label}.{field}", child, lease_id)
    return records
