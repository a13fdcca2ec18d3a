"""The role table, over the wire: every method against every kind of
caller (no credential, a bad, expired or revoked token, a viewer, a user,
an admin, another user than the lease's), each outcome derived from
`broker.api.permissions.METHOD_ROLES`, streams included."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from broker.api.permissions import METHOD_ROLES, required_role
from broker.v1 import (
    access_service_pb2,
    access_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_service_pb2,
    lease_service_pb2_grpc,
)
from tests.conftest import RPC_TIMEOUT
from tests.integration.auth_helpers import (
    OWN_LEASE_METHODS,
    REFUSED,
    ROLES,
    create,
    metadata_of,
)
from tests.integration.helpers import acquire_request, calculator, requirement


class Calls:
    """One call of each method, as `caller` would make it, and its code."""

    def __init__(self, channel: grpc.Channel, tokens: dict[str, str]):
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        self.leases = lease_service_pb2_grpc.LeaseServiceStub(channel)
        self.events = event_service_pb2_grpc.EventServiceStub(channel)
        self.access = access_service_pb2_grpc.AccessServiceStub(channel)
        self.tokens = tokens
        self.count = 0
        self.call(self.inventory.CreateResource, "admin", create("lic", "Licence", product="x"))
        self.call(self.inventory.CreateResource, "admin", create("calc-1", "Calculator"))

    def call(self, method, caller: str, request) -> grpc.StatusCode:
        metadata = metadata_of(self.tokens.get(caller))
        try:
            method(request, timeout=RPC_TIMEOUT, metadata=metadata)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def alice_lease(self) -> lease_service_pb2.AcquireLeaseResponse:
        return self.leases.AcquireLease(
            acquire_request(requirement("Licence")),
            timeout=RPC_TIMEOUT,
            metadata=metadata_of(self.tokens["alice"]),
        )

    def run(self, method: str, caller: str) -> grpc.StatusCode:
        self.count += 1
        metadata = metadata_of(self.tokens.get(caller))
        inventory, leases = self.inventory, self.leases
        if method == "ListKinds":
            return self.call(inventory.ListKinds, caller, inventory_service_pb2.ListKindsRequest())
        if method == "GetResource":
            request = inventory_service_pb2.GetResourceRequest(name="calc-1")
            return self.call(inventory.GetResource, caller, request)
        if method == "ListResources":
            request = inventory_service_pb2.ListResourcesRequest()
            return self.call(inventory.ListResources, caller, request)
        if method == "CreateResource":
            request = create(f"calc-new-{self.count}", "Calculator")
            return self.call(inventory.CreateResource, caller, request)
        if method == "UpdateResource":
            # A resource that does not exist: refused before it is looked up.
            request = inventory_service_pb2.UpdateResourceRequest(
                resource=calculator("no-such-calc", comment="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["comment"]),
            )
            return self.call(inventory.UpdateResource, caller, request)
        if method == "DeleteResource":
            request = inventory_service_pb2.DeleteResourceRequest(name="no-such-calc")
            return self.call(inventory.DeleteResource, caller, request)
        if method in ("SetOutOfService", "ReturnToService"):
            # A resource that does not exist: refused before it is looked up.
            request = {
                "SetOutOfService": lambda: inventory_service_pb2.SetOutOfServiceRequest(
                    name="no-such-calc", reason="matrix"
                ),
                "ReturnToService": lambda: inventory_service_pb2.ReturnToServiceRequest(
                    name="no-such-calc"
                ),
            }[method]()
            return self.call(getattr(inventory, method), caller, request)
        if method in (
            "GetLease",
            "RenewLease",
            "ReleaseLease",
            "ReleaseResources",
            "RevokeLease",
            "ReportSetup",
        ):
            held = self.alice_lease()
            lease_id, secret = held.lease.lease_id, held.secret
            request = {
                "GetLease": lambda: lease_service_pb2.GetLeaseRequest(lease_id=lease_id),
                "RenewLease": lambda: lease_service_pb2.RenewLeaseRequest(
                    lease_id=lease_id, secret=secret
                ),
                "ReleaseLease": lambda: lease_service_pb2.ReleaseLeaseRequest(
                    lease_id=lease_id, secret=secret
                ),
                "ReleaseResources": lambda: lease_service_pb2.ReleaseResourcesRequest(
                    lease_id=lease_id, secret=secret, resources=["lic"]
                ),
                "RevokeLease": lambda: lease_service_pb2.RevokeLeaseRequest(
                    lease_id=lease_id, reason="matrix"
                ),
                "ReportSetup": lambda: lease_service_pb2.ReportSetupRequest(
                    lease_id=lease_id, secret=secret, resource="lic", ok=True
                ),
            }[method]()
            return self.call(getattr(leases, method), caller, request)
        if method == "ListLeases":
            return self.call(leases.ListLeases, caller, lease_service_pb2.ListLeasesRequest())
        if method == "ListWaiters":
            return self.call(leases.ListWaiters, caller, lease_service_pb2.ListWaitersRequest())
        if method == "AcquireLease":
            request = acquire_request(requirement("Licence"))
            return self.call(leases.AcquireLease, caller, request)
        if method == "WatchAcquireLease":
            request = lease_service_pb2.WatchAcquireLeaseRequest(
                request=acquire_request(requirement("Licence"))
            )
            try:
                list(leases.WatchAcquireLease(request, timeout=RPC_TIMEOUT, metadata=metadata))
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK
        if method == "OpenSession":
            return self.open_session(metadata)
        if method == "ListEvents":
            request = event_service_pb2.ListEventsRequest()
            return self.call(self.events.ListEvents, caller, request)
        if method == "GetUsageStats":
            request = event_service_pb2.GetUsageStatsRequest()
            return self.call(self.events.GetUsageStats, caller, request)
        if method == "WatchEvents":
            return self.watch_events(metadata)
        if method == "GetCaller":
            request = access_service_pb2.GetCallerRequest()
            return self.call(self.access.GetCaller, caller, request)
        raise AssertionError(f"no call of {method} in this test: add one")

    def watch_events(self, metadata) -> grpc.StatusCode:
        """The first event of a watch (the resources created are events)."""
        calls = self.events.WatchEvents(
            event_service_pb2.WatchEventsRequest(), timeout=RPC_TIMEOUT, metadata=metadata
        )
        try:
            first = next(calls)
        except grpc.RpcError as error:
            return error.code()
        assert first.event.sequence
        calls.cancel()
        return grpc.StatusCode.OK

    def open_session(self, metadata) -> grpc.StatusCode:
        sent = [lease_service_pb2.OpenSessionRequest()]
        calls = self.leases.OpenSession(iter(sent), timeout=RPC_TIMEOUT, metadata=metadata)
        try:
            first = next(calls)
        except grpc.RpcError as error:
            return error.code()
        assert first.session_id
        calls.cancel()
        return grpc.StatusCode.OK


def expected(method: str, caller: str) -> grpc.StatusCode:
    """What the role table (and ownership) say the call gets."""
    if caller in REFUSED:
        return grpc.StatusCode.UNAUTHENTICATED
    if ROLES[caller].rank < required_role(f"/broker.v1.{service_of(method)}/{method}").rank:
        return grpc.StatusCode.PERMISSION_DENIED
    if method in OWN_LEASE_METHODS and caller != "alice":
        return grpc.StatusCode.PERMISSION_DENIED
    if method in ("UpdateResource", "DeleteResource", "SetOutOfService", "ReturnToService"):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.OK


def service_of(method: str) -> str:
    for path in METHOD_ROLES:
        service, name = path.strip("/").split("/")
        if name == method:
            return service.removeprefix("broker.v1.")
    raise AssertionError(f"{method} is not in the role table")


def test_every_method_and_caller_gets_what_the_role_table_says(auth_broker):
    server, tokens = auth_broker
    methods = [path.rsplit("/", 1)[1] for path in METHOD_ROLES]
    with grpc.insecure_channel(server.address) as channel:
        calls = Calls(channel, tokens)
        outcomes = {
            (method, caller): calls.run(method, caller)
            for method in methods
            for caller in (*REFUSED, *ROLES)
        }
    wrong = {
        key: f"got {code.name}, expected {expected(*key).name}"
        for key, code in outcomes.items()
        if code != expected(*key)
    }
    assert not wrong, wrong
    assert len(outcomes) == len(METHOD_ROLES) * (len(REFUSED) + len(ROLES))
