"""The `broker serve` command as operators run it: with the repository's own
`rotest.yml`, health and reflection on, a clean stop on SIGTERM, and clear
failures for a bad configuration or a taken port."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.v1 import inventory_service_pb2, inventory_service_pb2_grpc
from tests.conftest import RPC_TIMEOUT
from tests.integration.helpers import EXIT_TIMEOUT, run_serve, write_config

REPOSITORY_CONFIG = Path(__file__).resolve().parents[2] / "rotest.yml"
SERVICES = ("broker.v1.InventoryService", "broker.v1.LeaseService")


@pytest.fixture
def database_args(tmp_path) -> tuple[str, ...]:
    return ("--database", f"sqlite:///{tmp_path / 'serve.sqlite3'}", "--address", "127.0.0.1:0")


@pytest.fixture
def served(start_broker, database_args):
    """A broker serving the repository's configuration on a temporary database."""
    process = start_broker("--config", str(REPOSITORY_CONFIG), *database_args)
    process.wait_listening()
    return process


def test_the_repository_config_serves_health_and_the_calculator_kind(served):
    assert served.address.startswith("127.0.0.1:")
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", *SERVICES):
            response = health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        kinds = inventory_service_pb2_grpc.InventoryServiceStub(channel).ListKinds(
            inventory_service_pb2.ListKindsRequest(), timeout=RPC_TIMEOUT
        )
        assert [kind.name for kind in kinds.kinds] == ["Calculator"]


def test_reflection_lists_the_broker_services(served):
    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                timeout=RPC_TIMEOUT,
            )
        )

    [response] = responses
    listed = {service.name for service in response.list_services_response.service}
    assert set(SERVICES) <= listed
    assert "grpc.health.v1.Health" in listed


def test_sigterm_stops_the_broker_with_status_0(served):
    with grpc.insecure_channel(served.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)

    served.signal(signal.SIGTERM)

    assert served.wait(EXIT_TIMEOUT) == 0
    assert "stopping" in served.stderr


@pytest.mark.parametrize(
    ("document", "key"),
    [
        pytest.param({"leases": {"max_ttl": -1}}, "leases.max_ttl", id="negative-max-ttl"),
        pytest.param({"server": {"colour": "red"}}, "server.colour", id="unknown-key"),
        pytest.param({"kinds": ["no.such.KindData"]}, "kinds[0]", id="unimportable-kind"),
    ],
)
def test_a_bad_config_exits_with_status_2_naming_the_key(tmp_path, database_args, document, key):
    config = write_config(tmp_path / "bad.yml", document)

    result = run_serve("--config", str(config), *database_args, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "configuration error" in result.stderr
    assert "listening" not in result.stdout


def test_a_port_in_use_is_a_clear_error(tmp_path, database_args):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        result = run_serve(
            "--config",
            str(REPOSITORY_CONFIG),
            *database_args[:2],
            "--address",
            address,
            cwd=tmp_path,
        )

    assert result.returncode not in (0, None), result.stderr
    assert f"cannot listen on {address}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


@pytest.mark.parametrize(
    ("document", "told"),
    [
        pytest.param({}, "broker tokens create admin --role admin", id="auth-off"),
        pytest.param({"auth": {"enabled": True}}, "server.allow_insecure", id="auth-on-no-tls"),
    ],
)
def test_a_network_address_without_its_safeguards_stops_start_up(
    tmp_path, database_args, document, told
):
    # A documentation address (RFC 5737): refused before anything binds it.
    config = write_config(tmp_path / "exposed.yml", document)

    result = run_serve(
        "--config", str(config), *database_args, "--address", "192.0.2.1:50051", cwd=tmp_path
    )

    assert result.returncode == 2, result.stderr
    assert "server.address: 192.0.2.1:50051 is not a loopback address" in result.stderr
    assert told in result.stderr
    assert "cannot listen" not in result.stderr and "listening" not in result.stdout
