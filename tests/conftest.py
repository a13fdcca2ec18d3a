"""Fixtures shared by every suite: a database per test, the domain objects on
a fake clock, and a real broker on 127.0.0.1:0 with channels to it.

One suite, two backends: every test that uses the `config` fixture runs on
SQLite and on PostgreSQL (`BROKER_TEST_POSTGRES`, default the local server's
`test` database), each PostgreSQL test in a schema of its own that is dropped
afterwards. Where PostgreSQL cannot be reached those runs skip, unless
`BROKER_REQUIRE_POSTGRES=1` (CI) makes that a failure.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from urllib.parse import urlparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.api.server import BrokerServer, build_server
from broker.config import Config, DatabaseConfig, LeaseConfig, WebConfig
from broker.domain.inventory import Inventory
from broker.domain.kinds import KindRegistry
from broker.domain.leasing import Leases
from broker.models.database import bind, close_database, open_database
from broker.models.schema import create_tables
from broker.v1 import inventory_service_pb2_grpc, lease_service_pb2_grpc
from tests.kinds import TEST_KINDS

RPC_TIMEOUT = 10.0


class FakeClock:
    """A clock that moves only when told, so TTL tests need no sleeping."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


POSTGRES_URL = os.environ.get("BROKER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def make_config(tmp_path, database_url: str | None = None, **leases) -> Config:
    """A configuration with every test kind, on `database_url` or a fresh
    SQLite file."""
    return Config(
        database=DatabaseConfig(database_url or f"sqlite:///{tmp_path / 'broker.sqlite3'}"),
        leases=LeaseConfig(**{"default_ttl": 30.0, "max_ttl": 600.0, **leases}),
        kinds=TEST_KINDS,
        # No HTTP endpoints: tests that want them ask for port 0.
        web=WebConfig(""),
    )


CLIENT_VARIABLES = (
    "BROKER_TARGET",
    "BROKER_TOKEN",
    "BROKER_WAIT",
    "BROKER_CA_FILE",
    "BROKER_CERT_FILE",
    "BROKER_KEY_FILE",
    "ROTEST_HOST",
    "ROTEST_SERVER_PORT",
    "ROTEST_RESOURCE_REQUEST_TIMEOUT",
)


@pytest.fixture(autouse=True)
def no_inherited_client_configuration(monkeypatch):
    """Clients made by tests read no client configuration the shell that
    started the suite had: no `BROKER_*` or `ROTEST_*` variable, and an
    empty configuration file wherever the suite runs from; and brokers
    started as processes bind no web address of their own."""
    for variable in CLIENT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("BROKER_CLIENT_CONFIG", os.devnull)
    # Brokers the tests start as processes serve no HTTP unless told to
    # (several at once cannot share the default port).
    monkeypatch.setenv("BROKER_WEB_ADDRESS", "")


@pytest.fixture
def default_sigint():
    """SIGINT raises KeyboardInterrupt in the test, as at an interactive
    terminal, even when the suite was started with SIGINT ignored (as a
    background job of a non-interactive shell is)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def postgres_admin():
    """A connection to the test PostgreSQL server, or a skip saying why."""
    import psycopg2

    try:
        connection = psycopg2.connect(POSTGRES_URL, connect_timeout=3)
    except psycopg2.OperationalError as error:
        reason = f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(error).strip()}"
        if os.environ.get("BROKER_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture
def postgres_url(postgres_admin):
    """The URL of a fresh schema of the test database, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    yield f"{POSTGRES_URL}?schema={schema}"
    with postgres_admin.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def proxy(postgres_url):
    """A TCP proxy in front of the test PostgreSQL server, to cut or stall
    one connection's link (`url_for` gives the URL through it)."""
    from tests.multibroker.tcp_proxy import TcpProxy

    parsed = urlparse(postgres_url)
    started = TcpProxy((parsed.hostname or "127.0.0.1", parsed.port or 5432))
    yield started
    started.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test that asks for a database runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def config(tmp_path, database_url) -> Config:
    return make_config(tmp_path, database_url)


@pytest.fixture
def kinds(config) -> KindRegistry:
    return KindRegistry(config.kind_models())


@pytest.fixture
def database(config, kinds):
    """A fresh database bound to every model, closed after the test."""
    db = open_database(config.database.url)
    bind(db)
    create_tables(kinds.models)
    db.connect(reuse_if_open=True)
    yield db
    close_database(db)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def inventory(database, kinds, clock) -> Inventory:
    return Inventory(kinds, clock)


@pytest.fixture
def leases(database, kinds, clock, config) -> Leases:
    return Leases(
        kinds, default_ttl=config.leases.default_ttl, max_ttl=config.leases.max_ttl, clock=clock
    )


def wait_serving(
    address: str, timeout: float = RPC_TIMEOUT, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Blocks until the broker at `address` answers health SERVING (over TLS
    with `credentials`)."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def broker(config) -> BrokerServer:
    """A real broker in this process on 127.0.0.1 and a free port."""
    server = build_server(dataclasses.replace(config, base_dir="."), "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    yield server
    server.stop(0)


@pytest.fixture
def channel(broker):
    with grpc.insecure_channel(broker.address) as channel:
        yield channel


@pytest.fixture
def inventory_stub(channel) -> inventory_service_pb2_grpc.InventoryServiceStub:
    return inventory_service_pb2_grpc.InventoryServiceStub(channel)


@pytest.fixture
def lease_stub(channel) -> lease_service_pb2_grpc.LeaseServiceStub:
    return lease_service_pb2_grpc.LeaseServiceStub(channel)
