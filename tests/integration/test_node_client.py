"""The Node.js example (`examples/node/acquire.js`) against a real broker: a
client in another language, built only from the `.proto` files, acquires and
releases a lease."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from broker.v1 import (
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_pb2,
    lease_service_pb2,
)
from sdk import BrokerClient
from tests.conftest import RPC_TIMEOUT
from tests.integration.auth_helpers import metadata_of
from tests.integration.helpers import calculator, create_resource

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to run the Node.js example",
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "node"
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 60.0


def installed_in_place() -> bool:
    """Whether examples/node/node_modules holds exactly what the lockfile pins."""
    try:
        locked = json.loads((EXAMPLE / "package-lock.json").read_text())
        installed = json.loads((EXAMPLE / "node_modules" / ".package-lock.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = {path: entry for path, entry in locked["packages"].items() if path}
    return installed.get("packages") == wanted


@pytest.fixture(scope="session")
def node_example(tmp_path_factory) -> Path:
    """The directory to run acquire.js from: the example itself if its
    node_modules matches the lockfile, else a copy (beside a copy of protos/,
    which the script loads from ../../protos) installed with `npm ci`."""
    if installed_in_place():
        return EXAMPLE
    root = tmp_path_factory.mktemp("node-example")
    shutil.copytree(REPO / "protos", root / "protos")
    copy = root / "examples" / "node"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("node_modules"))
    install = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert install.returncode == 0, f"npm ci failed:\n{install.stdout}\n{install.stderr}"
    return copy


def run_example(
    directory: Path, address: str, resource: str, token: str = "", **tls: str
) -> subprocess.CompletedProcess:
    """Runs acquire.js; `tls` are BROKER_CA_FILE and the like, by their
    names in lower case (`ca_file=...`)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_")}
    if token:
        env["BROKER_TOKEN"] = token
    env.update({f"BROKER_{name.upper()}": value for name, value in tls.items()})
    return subprocess.run(
        ["node", "acquire.js", address, resource],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_node_client_acquires_and_releases(node_example, broker, inventory_stub, lease_stub):
    create_resource(inventory_stub, calculator("calc"))

    run = run_example(node_example, broker.address, "calc")

    assert run.returncode == 0, run.stderr
    granted = re.search(r"^lease (\S+) holds calc, fencing token (\d+)$", run.stdout, re.M)
    assert granted, run.stdout
    lease_id, fencing_token = granted.group(1), int(granted.group(2))
    assert fencing_token >= 1
    assert f"lease {lease_id} is LEASE_STATE_RELEASED" in run.stdout
    listed = lease_stub.ListLeases(
        lease_service_pb2.ListLeasesRequest(holder="node-example"), timeout=RPC_TIMEOUT
    )
    assert [(lease.lease_id, lease.state) for lease in listed.leases] == [
        (lease_id, lease_pb2.LEASE_STATE_RELEASED)
    ]
    assert listed.leases[0].grants[0].fencing_token == fencing_token


def test_node_client_reports_grpc_errors(node_example, broker):
    run = run_example(node_example, broker.address, "no-such-calc")

    assert run.returncode != 0
    assert run.stderr.startswith("FAILED_PRECONDITION: "), run.stderr


def test_node_client_sends_broker_token(node_example, auth_broker):
    server, tokens = auth_broker
    with grpc.insecure_channel(server.address) as channel:
        inventory_service_pb2_grpc.InventoryServiceStub(channel).CreateResource(
            inventory_service_pb2.CreateResourceRequest(resource=calculator("calc")),
            timeout=RPC_TIMEOUT,
            metadata=metadata_of(tokens["admin"]),
        )

    anonymous = run_example(node_example, server.address, "calc")
    assert anonymous.returncode != 0
    assert anonymous.stderr.startswith("UNAUTHENTICATED: "), anonymous.stderr

    run = run_example(node_example, server.address, "calc", token=tokens["alice"])
    assert run.returncode == 0, run.stderr
    assert "is LEASE_STATE_RELEASED" in run.stdout


def by_name(server) -> str:
    """The broker's address by the name in its certificate: Node.js warns
    when TLS checks a certificate for an IP address."""
    return f"localhost:{server.port}"


def test_node_client_calls_a_tls_broker_with_a_ca_file_and_token(node_example, tls_broker, pki):
    server, tokens = tls_broker
    with BrokerClient(server.address, token=tokens["admin"], tls=pki.options()) as admin:
        admin.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1"})

    plain = run_example(node_example, by_name(server), "calc", token=tokens["alice"])
    assert plain.returncode != 0
    assert plain.stderr.startswith("UNAVAILABLE: "), plain.stderr

    ca_file = str(pki.ca.cert_file)
    run = run_example(node_example, by_name(server), "calc", token=tokens["alice"], ca_file=ca_file)
    assert run.returncode == 0, run.stderr
    assert "is LEASE_STATE_RELEASED" in run.stdout


def test_node_client_shows_a_client_certificate_to_a_mtls_broker(node_example, mtls_broker, pki):
    server, _ = mtls_broker
    with BrokerClient(server.address, token="", tls=pki.options(pki.runner)) as admin:
        admin.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1"})
    files = {"ca_file": str(pki.ca.cert_file)}
    alice = {"cert_file": str(pki.alice.cert_file), "key_file": str(pki.alice.key_file)}

    anonymous = run_example(node_example, by_name(server), "calc", **files)
    assert anonymous.returncode != 0
    assert anonymous.stderr.startswith("UNAVAILABLE: "), anonymous.stderr

    run = run_example(node_example, by_name(server), "calc", **files, **alice)
    assert run.returncode == 0, run.stderr
    assert "is LEASE_STATE_RELEASED" in run.stdout
