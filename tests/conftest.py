"""Fixtures shared by every suite: a database per test, the domain objects on
a fake clock, and a real broker on 127.0.0.1:0 with channels to it."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.api.server import BrokerServer, build_server
from broker.config import Config, DatabaseConfig, LeaseConfig
from broker.domain.inventory import Inventory
from broker.domain.kinds import KindRegistry
from broker.domain.leasing import Leases
from broker.models.database import bind, open_database
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


def make_config(tmp_path, **leases) -> Config:
    """A configuration on a fresh SQLite file with every test kind."""
    return Config(
        database=DatabaseConfig(f"sqlite:///{tmp_path / 'broker.sqlite3'}"),
        leases=LeaseConfig(**{"default_ttl": 30.0, "max_ttl": 600.0, **leases}),
        kinds=TEST_KINDS,
    )


@pytest.fixture
def config(tmp_path) -> Config:
    return make_config(tmp_path)


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
    db.close()


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


def wait_serving(address: str, timeout: float = RPC_TIMEOUT) -> None:
    """Blocks until the broker at `address` answers health SERVING."""
    with grpc.insecure_channel(address) as channel:
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
