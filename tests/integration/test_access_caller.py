"""`AccessService.GetCaller` names the verified principal, its role and its
groups, and says whether the broker authenticates at all."""

from __future__ import annotations

import grpc
import pytest

from broker.domain.tokens import Tokens
from broker.v1 import access_service_pb2, access_service_pb2_grpc
from sdk import BrokerClient, cli
from tests.conftest import RPC_TIMEOUT
from tests.integration.auth_helpers import metadata_of


def get_caller(channel, metadata=()) -> access_service_pb2.GetCallerResponse:
    stub = access_service_pb2_grpc.AccessServiceStub(channel)
    return stub.GetCaller(
        access_service_pb2.GetCallerRequest(), timeout=RPC_TIMEOUT, metadata=metadata
    )


def test_with_authentication_off_every_caller_is_an_administrator_it_names(channel):
    answer = get_caller(channel, (("x-broker-holder", "alice@bench-3"),))
    assert answer.name == "alice@bench-3"
    assert answer.role == access_service_pb2.ROLE_ADMIN
    assert not answer.authentication_enabled
    assert get_caller(channel).name == ""


def test_with_authentication_on_the_token_names_the_caller(auth_broker):
    server, tokens = auth_broker
    grouped = Tokens().create("erin", "user", groups=("rf", "bench"))[1]
    with grpc.insecure_channel(server.address) as channel:
        viewer = get_caller(channel, metadata_of(tokens["viewer"]))
        erin = get_caller(channel, metadata_of(grouped))
        admin = get_caller(channel, metadata_of(tokens["admin"]))
        with pytest.raises(grpc.RpcError) as refused:
            get_caller(channel)
    assert (viewer.name, viewer.role) == ("viewer", access_service_pb2.ROLE_VIEWER)
    assert viewer.authentication_enabled
    assert (erin.name, erin.role, list(erin.groups)) == (
        "erin",
        access_service_pb2.ROLE_USER,
        ["rf", "bench"],
    )
    assert (admin.name, admin.role) == ("admin", access_service_pb2.ROLE_ADMIN)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_sdk_and_the_cli_say_who_the_broker_takes_you_to_be(auth_broker, capsys):
    server, tokens = auth_broker
    with BrokerClient(server.address, token=tokens["viewer"]) as client:
        me = client.whoami()
    assert (me.name, me.role) == ("viewer", access_service_pb2.ROLE_VIEWER)
    status = cli.main(["--target", server.address, "--token", tokens["alice"], "whoami"])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK
    assert out.splitlines() == [
        "name:           alice",
        "role:           user",
        "groups:         -",
        "authentication: on",
    ]
