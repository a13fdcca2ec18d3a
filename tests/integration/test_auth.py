"""Authentication and authorisation over the wire: every method against
every kind of caller, checked against the role table; ownership by
principal; the token commands of the CLI; the SDK's token."""

from __future__ import annotations

import dataclasses
import subprocess
import threading

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.api.server import build_server
from broker.config import AuthConfig
from broker.domain.values import EventType
from broker.models.event import Event
from broker.v1 import (
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_pb2,
    lease_service_pb2,
    lease_service_pb2_grpc,
)
from sdk import BrokerClient, cli
from sdk.errors import UnauthenticatedError
from tests.conftest import RPC_TIMEOUT, wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS, REFUSED, create, metadata_of
from tests.integration.helpers import (
    acquire_request,
    broker_command,
    calculator,
    requirement,
    subprocess_env,
    wait_until,
    write_config,
)


def test_refusals_say_why_and_what_to_do(auth_broker):
    server, tokens = auth_broker
    with grpc.insecure_channel(server.address) as channel:
        stub = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        texts = {}
        for caller in REFUSED:
            with pytest.raises(grpc.RpcError) as raised:
                stub.ListKinds(
                    inventory_service_pb2.ListKindsRequest(),
                    timeout=RPC_TIMEOUT,
                    metadata=metadata_of(tokens.get(caller)),
                )
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            texts[caller] = raised.value.details()
    assert "Bearer <token>" in texts["no credential"]
    assert "broker tokens create" in texts["bad token"]
    assert "carol" in texts["expired token"] and "expired" in texts["expired token"]
    assert "dave" in texts["revoked token"] and "revoked" in texts["revoked token"]


def test_health_and_reflection_need_no_credential(auth_broker):
    server, _ = auth_broker
    wait_serving(server.address)
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))
    names = {service.name for service in answer.list_services_response.service}
    assert "broker.v1.LeaseService" in names


class Caller:
    """The broker's stubs on one channel; `as_(who, method, request)` makes
    the call with `who`'s token."""

    def __init__(self, channel: grpc.Channel, tokens: dict[str, str]):
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        self.leases = lease_service_pb2_grpc.LeaseServiceStub(channel)
        self.tokens = tokens

    def as_(self, who: str, method, request):
        return method(request, timeout=RPC_TIMEOUT, metadata=metadata_of(self.tokens[who]))


@pytest.fixture
def caller(auth_broker) -> Caller:
    server, tokens = auth_broker
    with grpc.insecure_channel(server.address) as channel:
        yield Caller(channel, tokens)


def test_two_principals_on_one_holder_never_share_a_lease(caller):
    leases = caller.leases
    caller.as_("admin", caller.inventory.CreateResource, create("calc-1", "Calculator"))
    held = caller.as_(
        "alice",
        leases.AcquireLease,
        acquire_request(requirement("Calculator"), holder="ci@bench-3"),
    )
    assert (held.lease.principal, held.lease.holder) == ("alice", "ci@bench-3")
    assert held.lease.grants[0].resource.owner == "alice"
    for method, request in (
        (leases.RenewLease, lease_service_pb2.RenewLeaseRequest),
        (leases.ReleaseLease, lease_service_pb2.ReleaseLeaseRequest),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            caller.as_("bob", method, request(lease_id=held.lease.lease_id, secret=held.secret))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "another principal" in raised.value.details()
    listed = caller.as_("viewer", leases.ListLeases, lease_service_pb2.ListLeasesRequest()).leases
    assert [(lease.principal, lease.holder) for lease in listed] == [("alice", "ci@bench-3")]
    released = caller.as_(
        "alice",
        leases.ReleaseLease,
        lease_service_pb2.ReleaseLeaseRequest(lease_id=held.lease.lease_id, secret=held.secret),
    )
    assert released.lease.state == lease_pb2.LEASE_STATE_RELEASED


def test_a_reservation_goes_by_the_verified_principal_not_the_holder(caller):
    reserved = calculator("calc-r", reserved_for="alice")
    caller.as_(
        "admin",
        caller.inventory.CreateResource,
        inventory_service_pb2.CreateResourceRequest(resource=reserved),
    )
    with pytest.raises(grpc.RpcError) as raised:
        caller.as_(
            "bob",
            caller.leases.AcquireLease,
            acquire_request(requirement("Calculator"), holder="alice"),
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    held = caller.as_(
        "alice", caller.leases.AcquireLease, acquire_request(requirement("Calculator"))
    )
    assert held.lease.principal == "alice"


def test_events_name_the_verified_principal(caller):
    caller.as_("admin", caller.inventory.CreateResource, create("calc-1", "Calculator"))
    held = caller.as_(
        "alice",
        caller.leases.AcquireLease,
        acquire_request(requirement("Calculator"), holder="admin"),
    )
    caller.as_(
        "admin",
        caller.leases.RevokeLease,
        lease_service_pb2.RevokeLeaseRequest(lease_id=held.lease.lease_id, reason="bench"),
    )
    actors = {event.type: event.actor for event in Event.select().where(Event.resource == "calc-1")}
    assert actors == {
        EventType.RESOURCE_CREATED.value: "admin",
        EventType.LEASE_GRANTED.value: "alice",
        EventType.LEASE_REVOKED.value: "admin",
    }


def open_session(caller: Caller, who: str):
    """Opens a session as `who`: its id, the stream (which stays open until
    the event is set) and the event."""
    done = threading.Event()

    def requests():
        yield lease_service_pb2.OpenSessionRequest(holder=who)
        done.wait(RPC_TIMEOUT)

    stream = caller.leases.OpenSession(
        requests(), timeout=RPC_TIMEOUT, metadata=metadata_of(caller.tokens[who])
    )
    return next(stream).session_id, stream, done


def test_a_lease_binds_only_to_a_session_of_its_own_principal(caller):
    caller.as_("admin", caller.inventory.CreateResource, create("calc-1", "Calculator"))
    bobs, _bob_stream, bob_done = open_session(caller, "bob")
    alices, _alice_stream, alice_done = open_session(caller, "alice")
    try:
        bound = acquire_request(requirement("Calculator"), holder="bob")
        bound.session_id = bobs
        with pytest.raises(grpc.RpcError) as raised:
            caller.as_("alice", caller.leases.AcquireLease, bound)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"session {bobs} is not alice's" in raised.value.details()
        listed = caller.as_(
            "viewer", caller.leases.ListLeases, lease_service_pb2.ListLeasesRequest()
        )
        assert list(listed.leases) == []
        bound.session_id = alices
        held = caller.as_("alice", caller.leases.AcquireLease, bound)
        assert (held.lease.session_id, held.lease.principal) == (alices, "alice")
    finally:
        bob_done.set()
        alice_done.set()


def test_leases_are_listed_by_principal(caller):
    for name in ("calc-1", "calc-2", "calc-3"):
        caller.as_("admin", caller.inventory.CreateResource, create(name, "Calculator"))
    alices = {
        caller.as_(
            "alice", caller.leases.AcquireLease, acquire_request(requirement("Calculator"))
        ).lease.lease_id
        for _ in range(2)
    }
    # A holder's name is only a description: it does not make the lease hers.
    caller.as_(
        "bob",
        caller.leases.AcquireLease,
        acquire_request(requirement("Calculator"), holder="alice"),
    )

    def listed(principal: str) -> set[str]:
        request = lease_service_pb2.ListLeasesRequest(principal=principal)
        leases = caller.as_("viewer", caller.leases.ListLeases, request).leases
        return {lease.lease_id for lease in leases}

    assert listed("alice") == alices
    assert len(listed("bob")) == 1
    assert len(listed("")) == 3


# ------------------------------------------------------------ the CLI and SDK


CALCULATOR_KIND = "resources.calculator.data.CalculatorData"


def broker_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [broker_command(), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_commands_work_offline_and_a_revoke_reaches_a_running_broker(
    tmp_path, database_url, config
):
    path = write_config(
        tmp_path / "rotest.yml",
        # The kinds a subprocess can import from anywhere (the tests' own
        # live in this checkout, which it does not have on its path).
        {"database": {"url": database_url}, "kinds": [CALCULATOR_KIND]},
    )
    made = broker_cli(
        "tokens",
        "create",
        "erin",
        "--role",
        "user",
        "--group",
        "lab",
        "--config",
        str(path),
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("rbk_") and len(token) > 40
    again = broker_cli(
        "tokens", "create", "erin", "--role", "user", "--config", str(path), cwd=tmp_path
    )
    assert again.returncode == 1 and "already exists" in again.stderr

    listing = broker_cli("tokens", "list", "--config", str(path), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "erin" in listing.stdout and "active" in listing.stdout
    assert token not in listing.stdout

    auth_config = dataclasses.replace(
        config, base_dir=".", auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS)
    )
    server = build_server(auth_config, "127.0.0.1:0")
    server.start()
    try:
        with BrokerClient(server.address, token=token, session=False) as client:
            assert client.list_kinds()
            revoked = broker_cli("tokens", "revoke", "erin", "--config", str(path), cwd=tmp_path)
            assert revoked.returncode == 0, revoked.stderr

            def refused() -> bool:
                try:
                    client.list_kinds()
                except UnauthenticatedError:
                    return True
                return False

            wait_until(refused, CACHE_SECONDS + RPC_TIMEOUT, "the revoked token to be refused")
    finally:
        server.stop(0)
    listing = broker_cli("tokens", "list", "--config", str(path), cwd=tmp_path)
    assert "revoked" in listing.stdout
    recorded = [(event.type, event.actor) for event in Event.select().order_by(Event.id)]
    assert [kind for kind, _ in recorded] == [
        EventType.TOKEN_CREATED.value,
        EventType.TOKEN_REVOKED.value,
    ]
    assert all(actor.startswith("local:") for _, actor in recorded)


def test_the_sdk_sends_its_token_or_broker_token(auth_broker, monkeypatch):
    server, tokens = auth_broker
    monkeypatch.delenv("BROKER_TOKEN", raising=False)
    with (
        BrokerClient(server.address, session=False) as anonymous,
        pytest.raises(UnauthenticatedError),
    ):
        anonymous.list_kinds()
    with BrokerClient(server.address, token=tokens["viewer"], session=False) as client:
        assert client.list_kinds()
    with BrokerClient(server.address, token=tokens["admin"], session=False) as admin:
        admin.create_resource("Licence", "lic", {"product": "matlab"})
    monkeypatch.setenv("BROKER_TOKEN", tokens["alice"])
    client = BrokerClient(server.address)
    # Read once, at construction: a later change is not picked up.
    monkeypatch.setenv("BROKER_TOKEN", tokens["viewer"])
    with client:
        session = client.open_session()
        lease, secret = client.acquire([requirement("Licence")], session_id=session.session_id)
        assert lease.principal == "alice"
        assert client.renew(lease.lease_id, secret).principal == "alice"
        session.close(RPC_TIMEOUT)


def test_the_cli_calls_with_its_token_or_broker_token(auth_broker, capsys, monkeypatch):
    server, tokens = auth_broker
    target = ("--target", server.address)
    monkeypatch.delenv("BROKER_TOKEN", raising=False)
    assert cli.main([*target, "kinds"]) == cli.EXIT_BROKER
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main([*target, "--token", tokens["viewer"], "kinds"]) == cli.EXIT_OK
    assert "Calculator" in capsys.readouterr().out
    monkeypatch.setenv("BROKER_TOKEN", tokens["viewer"])
    assert cli.main([*target, "kinds"]) == cli.EXIT_OK
    add = ("resources", "add", "Calculator", "calc-9", "--set", "ip_address=127.0.0.1")
    assert cli.main([*target, *add]) == cli.EXIT_BROKER
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert cli.main([*target, "--token", tokens["admin"], *add]) == cli.EXIT_OK
