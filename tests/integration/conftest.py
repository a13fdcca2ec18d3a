"""Fixtures of the integration suite: a seeded inventory for the in-process
broker, and `broker serve` subprocesses that are always killed."""

from __future__ import annotations

import dataclasses

import pytest

from broker.api.server import BrokerServer, build_server
from broker.config import AuthConfig, MtlsConfig, ServerConfig, TlsConfig
from sdk import BrokerClient
from tests.conftest import make_config, wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS, make_tokens
from tests.integration.certs import Issued, Pki
from tests.integration.console_helpers import start_console
from tests.integration.helpers import BrokerProcess, create_calculators


@pytest.fixture
def calculators(inventory_stub) -> list[str]:
    """Three usable calculators `calc-1`, `calc-2`, `calc-3` on bench-1."""
    return create_calculators(inventory_stub)


@pytest.fixture
def start_broker(tmp_path):
    """Starts `broker serve <args>` subprocesses in `tmp_path`; each one still
    running at the end of the test is killed by its pid."""
    started: list[BrokerProcess] = []

    def start(*args: str) -> BrokerProcess:
        process = BrokerProcess(args, cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def auth_broker(config):
    """A broker with authentication on, and a token for each caller of
    `tests.integration.auth_helpers`."""
    config = dataclasses.replace(
        config, base_dir=".", auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS)
    )
    server = build_server(config, "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    yield server, make_tokens()
    server.stop(0)


@pytest.fixture
def console(config) -> BrokerServer:
    """A broker with its web console on a free port."""
    server = start_console(config)
    yield server
    server.stop(0)


@pytest.fixture
def client(console):
    """An SDK client of the `console` broker, holder `alice@bench-3`."""
    with BrokerClient(console.address, holder="alice@bench-3") as client:
        yield client


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def start_tls_broker(tmp_path, pki: Pki, *, mutual: bool, who: Issued | None) -> BrokerServer:
    """A broker with authentication and TLS on (SQLite: how a caller is
    verified does not depend on the database); with `mutual`, clients need
    a certificate of the lab's CA, `ci-runner` being an admin."""
    tls = TlsConfig(
        str(pki.server.cert_file), str(pki.server.key_file), str(pki.ca.cert_file) if mutual else ""
    )
    mtls = MtlsConfig(roles={"ci-runner": "admin"}, groups={"ci-runner": ("ci",)})
    config = dataclasses.replace(
        make_config(tmp_path),
        server=ServerConfig(tls=tls),
        auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS, mtls=mtls),
    )
    server = build_server(config, "127.0.0.1:0")
    server.start()
    wait_serving(server.address, credentials=pki.credentials(who))
    return server


@pytest.fixture
def tls_broker(tmp_path, pki):
    """A TLS broker with authentication on, and the tokens of `auth_helpers`."""
    server = start_tls_broker(tmp_path, pki, mutual=False, who=None)
    yield server, make_tokens()
    server.stop(0)


@pytest.fixture
def mtls_broker(tmp_path, pki):
    """The same with mutual TLS."""
    server = start_tls_broker(tmp_path, pki, mutual=True, who=pki.alice)
    yield server, make_tokens()
    server.stop(0)
