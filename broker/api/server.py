"""Building and running the broker's gRPC server.

`build_server` wires configuration, database, domain and servicers into a
`BrokerServer` that is not started yet (tests start it on 127.0.0.1:0);
`serve_forever` is the `broker serve` command: start, announce the bound
address, stop gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from concurrent import futures

import grpc
import peewee
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker.api.errors import ErrorInterceptor
from broker.api.inventory_servicer import InventoryServicer
from broker.api.lease_servicer import LeaseServicer
from broker.config import Config, ConfigError, DatabaseConfig, load_config
from broker.domain.expiry import Reaper
from broker.domain.inventory import Inventory
from broker.domain.kinds import KindDeclarationError, KindRegistry
from broker.domain.leasing import Leases
from broker.models.database import DatabaseURLError, bind, open_database
from broker.models.schema import create_tables
from broker.v1 import (
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    lease_service_pb2,
    lease_service_pb2_grpc,
)

log = logging.getLogger("broker")

SERVICE_NAMES = (
    inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    lease_service_pb2.DESCRIPTOR.services_by_name["LeaseService"].full_name,
)

SERVER_OPTIONS = (
    # Ping idle clients every 20 s and drop them if no answer comes in 5 s, so
    # a connection to a vanished client is noticed.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client keep-alive pings as often as every 5 s, idle or not (the
    # SDK pings every 10 s), instead of answering them with GOAWAY.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A second broker on the same port must fail to start, not share it.
    ("grpc.so_reuseport", 0),
)


@dataclasses.dataclass
class BrokerServer:
    """A wired broker: call `start()`, then `stop()`."""

    server: grpc.Server
    host: str
    port: int
    health: health.HealthServicer
    reaper: Reaper
    database: peewee.Database
    executor: futures.ThreadPoolExecutor

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.server.start()
        self.reaper.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, lets calls in flight finish for `grace` seconds,
        then stops the expiry sweep and closes the database."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.reaper.stop()
        # Worker threads hold their own connections; ending them closes those.
        self.executor.shutdown(wait=True)
        self.database.close()


def build_server(config: Config, address: str | None = None) -> BrokerServer:
    """Wires a broker for `config`, bound to `address` (default
    `server.address`; port 0 picks a free port)."""
    kinds = KindRegistry(config.kind_models())
    database = open_database(config.database.url, base_dir=config.base_dir)
    bind(database)
    create_tables(kinds.models)
    leases = Leases(kinds, default_ttl=config.leases.default_ttl, max_ttl=config.leases.max_ttl)
    executor = futures.ThreadPoolExecutor(
        max_workers=config.server.workers, thread_name_prefix="rpc"
    )
    server = grpc.server(
        executor,
        interceptors=[ErrorInterceptor()],
        options=SERVER_OPTIONS,
    )
    inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(
        InventoryServicer(Inventory(kinds)), server
    )
    lease_service_pb2_grpc.add_LeaseServiceServicer_to_server(LeaseServicer(leases), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = address or config.server.address
    host = address.rsplit(":", 1)[0]
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise OSError(f"cannot listen on {address}: {error}") from error
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    reaper = Reaper(leases, config.leases.expiry_interval)
    return BrokerServer(server, host, port, health_servicer, reaper, database, executor)


def serve_forever(
    config_path: str | None, address: str | None = None, database_url: str | None = None
) -> int:
    """Runs a broker until SIGTERM or SIGINT; returns the exit status."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(config_path)
        if database_url:
            config = dataclasses.replace(config, database=DatabaseConfig(database_url))
        broker = build_server(config, address)
    except (ConfigError, DatabaseURLError, KindDeclarationError) as error:
        print(f"broker: configuration error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"broker: {error}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    broker.start()
    print(f"broker listening on {broker.address}", flush=True)
    stopping.wait()
    log.info("stopping: finishing calls in flight (up to %.1f s)", config.server.grace_seconds)
    broker.stop(config.server.grace_seconds)
    return 0
